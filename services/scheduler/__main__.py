"""`python -m services.scheduler`: run the scheduler service until SIGTERM/SIGINT."""

from services.scheduler.app import build_app
from services.scheduler.settings import DEFAULT_PORT, SchedulerSettings
from shared.service import serve


def main() -> None:
    serve("scheduler", SchedulerSettings, build_app, default_port=DEFAULT_PORT)


if __name__ == "__main__":
    main()
