"""`python -m services.registry`: run the registry service until SIGTERM/SIGINT."""

from services.registry.app import build_app
from services.registry.settings import DEFAULT_PORT, RegistrySettings
from shared.service import serve


def main() -> None:
    serve("registry", RegistrySettings, build_app, default_port=DEFAULT_PORT)


if __name__ == "__main__":
    main()
