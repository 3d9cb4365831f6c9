"""`python -m services.executor`: run the executor service until SIGTERM/SIGINT."""

from services.executor.app import build_app
from services.executor.settings import DEFAULT_PORT, ExecutorSettings
from shared.service import serve


def main() -> None:
    serve("executor", ExecutorSettings, build_app, default_port=DEFAULT_PORT)


if __name__ == "__main__":
    main()
