"""`ServableExportHook`: the chief of a training job exports numbered servable versions
(BASE/1, BASE/2, ...; see psflow.saved_model) every N checkpoints and at the end, so training
feeds serving continuously. Made by MonitoredTrainingSession(export_dir=...)."""

import logging

from ..saved_model import builder
from ..saved_model.signature_def_utils import SignatureDef
from .session_run_hook import SessionRunHook

log = logging.getLogger(__name__)


class ServableExportHook(SessionRunHook):
    """Exports a new version under `export_dir` after every `every_n_checkpoints`-th
    checkpoint (0 or None: only at the end) and when the session ends, from the values of
    the checkpoint just written (the whole model at one step, tables included) or, when
    nothing is checkpointed, from the session's store. `signature` is (inputs, outputs), two
    {key: node} dicts of one predict signature, or a signature_def_map {key: SignatureDef}."""

    def __init__(self, export_dir, signature, every_n_checkpoints=None):
        if every_n_checkpoints is not None and int(every_n_checkpoints) < 0:
            raise ValueError(f"export_every_n_checkpoints must be >= 0, got "
                             f"{every_n_checkpoints}")
        self.export_dir = export_dir
        self.signature_def_map = _signature_def_map(signature)
        self.every = int(every_n_checkpoints or 0)
        self.exported = []  # the version folders written, oldest first
        self._checkpoints = 0
        self._last_checkpoint = None
        self._exported_from = None

    def after_save(self, session, checkpoint):
        """Called by the CheckpointSaverHook with each checkpoint's directory."""
        self._checkpoints += 1
        self._last_checkpoint = checkpoint
        if self.every and self._checkpoints % self.every == 0:
            self._export(session, checkpoint)

    def end(self, session):
        checkpoint = self._last_checkpoint
        if checkpoint is None or checkpoint != self._exported_from:
            self._export(session, checkpoint)

    def _export(self, session, checkpoint):
        path = builder.export_version(self.export_dir, session,
                                      signature_def_map=self.signature_def_map,
                                      checkpoint=checkpoint)
        self._exported_from = checkpoint
        self.exported.append(path)
        log.info("exported servable %s", path)


def _signature_def_map(signature):
    if isinstance(signature, dict) and signature and all(
            isinstance(s, SignatureDef) for s in signature.values()):
        return signature
    if isinstance(signature, (tuple, list)) and len(signature) == 2:
        return builder.signature_map(*signature)
    raise TypeError("export_signature must be (inputs, outputs), two {key: tensor} dicts, or "
                    "a signature_def_map {key: SignatureDef}")
