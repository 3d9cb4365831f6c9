"""Settings of `app-engine up` (environment variables; see the README).

The supervisor reads the same variables as the services, with two differences: an empty
``DATABASE_URL`` / ``NATS_URL`` (the default) means "start the embedded server under DATA_DIR",
and ``HOST``/``PORT`` are where the single public port of the gateway listens.
"""

from __future__ import annotations

import msgspec

from shared.settings import CommonSettings

# stand-ins used only to run the common checks on the other fields when a URL is left empty
_ANY_POSTGRES = "postgresql://embedded"
_ANY_NATS = "nats://embedded"


class UpSettings(CommonSettings, frozen=True, kw_only=True):
    """Everything `app-engine up` reads from the environment."""

    database_url: str = ""
    nats_url: str = ""
    # the supervisor's own lines are for a person at a terminal; the services log JSON to files
    log_format: str = "console"
    # where the executor finds Docker; empty means the default socket, as Docker clients do
    docker_host: str = ""

    @property
    def embedded_postgres(self) -> bool:
        return not self.database_url

    @property
    def embedded_nats(self) -> bool:
        return not self.nats_url

    def validate(self) -> None:
        CommonSettings.validate(
            msgspec.structs.replace(
                self, database_url=self.database_url or _ANY_POSTGRES, nats_url=self.nats_url or _ANY_NATS
            )
        )
