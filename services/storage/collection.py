"""Output collection: the executor hands over the output folder, the run ends.

``PUT /internal/runs/{run_id}/outputs.tar?exit_code=N`` carries the tar Docker's
``get_archive(output_folder)`` returns. The body is streamed to a temporary file (at most
``MAX_OUTPUT_SIZE`` bytes), unpacked safely (:func:`~services.storage.archives.unpack_outputs`)
and every declared output validated (:mod:`.outputs`). Valid outputs are stored under
``runs/<id>/outputs/``; then exactly one of:

* every output valid and ``exit_code`` 0 → ``CollectOutputs`` (the run is FINISHED);
* some output invalid, missing, or the archive unusable (too large, not a tar, unsafe names)
  → ``FailRun(OUTPUTS_INVALID, stage=COLLECT)`` naming each output and why;
* ``exit_code`` not 0 → ``FailRun(TASK_EXIT_NONZERO, stage=EXECUTE)`` (the valid outputs are
  still stored, for diagnosis; output faults are appended to the message).

So a run is never left waiting on its outputs. The answer is 200
``{"state": "FINISHED"|"FAILED", "errors": [upstream error bodies]}``. Idempotent: a run already
FINISHED or FAILED answers its state again and changes nothing (an executor may retry the
request); a run not RUNNING gets 403.
"""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import tempfile
import uuid
from typing import Any

import structlog

from services.storage import errors as e
from services.storage.archives import UnsafeArchive, unpack_outputs
from services.storage.handlers import RunContext, Storage
from services.storage.outputs import Collected, validate_outputs
from shared.domain.decide import CollectOutputs, FailRun
from shared.domain.events import FailureCode, FailureStage, OutputRecord, RunStatus

log = structlog.get_logger("storage.collection")


class Collection:
    def __init__(self, storage: Storage, workdir: pathlib.Path) -> None:
        self.s = storage
        self.workdir = workdir

    async def begin(self, run_id: str) -> RunContext | dict[str, Any]:
        """The run to collect, or the answer already due (terminal run: nothing to do)."""
        ctx = await self.s.context(run_id, live_task=False)
        if ctx.state.terminal:
            assert ctx.state.status is not None
            return {"state": ctx.state.status.value, "errors": []}
        if ctx.state.status is not RunStatus.RUNNING:
            raise e.state_refused()
        return ctx

    def temp_file(self) -> pathlib.Path:
        return self.workdir / f"outputs-{uuid.uuid4().hex}.tar"

    async def reject(self, ctx: RunContext, reason: str, exit_code: int) -> dict[str, Any]:
        """The archive itself is unusable: fail the run with the reason."""
        error = e.error_body(
            "APPE-internal-task_run-invalid-output-archive",
            "invalid outputs in archive",
            {"type": "related", "parameterName": "", "description": reason},
        )
        return await self._fail(ctx, [error], exit_code, f"output archive rejected: {reason}")

    async def collect(self, ctx: RunContext, tar_path: pathlib.Path, exit_code: int) -> dict[str, Any]:
        folder = pathlib.Path(tempfile.mkdtemp(prefix="outputs-", dir=self.workdir))
        try:
            limits = self.s.limits
            try:
                skipped = await asyncio.to_thread(
                    unpack_outputs, tar_path, folder, limits.max_output, limits.max_output_entries
                )
            except UnsafeArchive as err:
                return await self.reject(ctx, str(err), exit_code)
            if skipped:
                log.info("outputs.skipped_entries", run_id=str(ctx.run_id), entries=skipped[:20])
            pairs = ctx.descriptor.matching_pairs()
            inputs = {ref.removeprefix("inputs/") for pair in pairs for ref in pair if ref.startswith("inputs/")}
            input_sizes = {name: await self.s.array_size(self.s.inputs_key(ctx, name)) for name in inputs}
            collected, errors = await asyncio.to_thread(
                validate_outputs, ctx.descriptor.outputs, folder, pairs, input_sizes
            )
            records = await self._store(ctx, collected)
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, True)
        if errors or exit_code != 0:
            reasons = "; ".join(
                f"{err['details'].get('parameterName')}: {err['message']} ({err['errorCode']})" for err in errors
            )
            return await self._fail(ctx, errors, exit_code, reasons)
        state = await self.s.execute_all(ctx, [CollectOutputs(outputs=tuple(records), exit_code=exit_code)])
        assert state.status is not None
        return {"state": state.status.value, "errors": []}

    async def _store(self, ctx: RunContext, collected: list[Collected]) -> list[OutputRecord]:
        records = []
        await self.s.blobs.delete_prefix(self.s.outputs_key(ctx))
        for output in collected:
            key = self.s.outputs_key(ctx, output.parameter)
            for rel, local in output.files:
                # the unpacked file is ours and goes with the folder anyway: moved, not copied
                await self.s.blobs.adopt(f"{key}/{rel}" if rel else key, pathlib.Path(local))
            records.append(OutputRecord(parameter=output.parameter, size=output.size, checksum=output.checksum))
        return records

    async def _fail(
        self, ctx: RunContext, errors: list[dict[str, Any]], exit_code: int, reasons: str
    ) -> dict[str, Any]:
        if exit_code != 0:
            message = f"task exited with code {exit_code}" + (f"; outputs: {reasons}" if reasons else "")
            command = FailRun(
                code=FailureCode.TASK_EXIT_NONZERO, message=message, stage=FailureStage.EXECUTE, exit_code=exit_code
            )
        else:
            command = FailRun(
                code=FailureCode.OUTPUTS_INVALID,
                message=f"invalid outputs: {reasons}"[:4000],
                stage=FailureStage.COLLECT,
                exit_code=exit_code,
            )
        state = await self.s.execute_all(ctx, [command])
        assert state.status is not None
        return {"state": state.status.value, "errors": errors}
