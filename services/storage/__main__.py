"""`python -m services.storage`: run the storage service until SIGTERM/SIGINT."""

from services.storage.app import build_app
from services.storage.settings import DEFAULT_PORT, StorageSettings
from shared.service import serve


def main() -> None:
    serve("storage", StorageSettings, build_app, default_port=DEFAULT_PORT)


if __name__ == "__main__":
    main()
