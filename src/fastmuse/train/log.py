"""Metrics as JSON lines: one object per logged step, flushed at once (tail -f friendly)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any


class JsonlLogger:
    """Appends to `path`. On resume from step s, lines of steps > s (written after the
    checkpoint the run resumes from) are dropped first, so the log matches the run."""

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            keep = [line for line, record in self._records() if record.get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        elif resume_step is None:
            self.path.write_text("", encoding="utf-8")

    def _records(self) -> list[tuple[str, dict[str, Any]]]:
        """The log's lines and their records. A line that is not a JSON object (torn by a kill
        in mid-write) is dropped with a warning: the checkpoint, not the log, holds the state."""
        out = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                warnings.warn(f"{self.path}:{n}: not a JSON record (torn by an interrupted write?); "
                              "dropping it", stacklevel=3)
                continue
            out.append((line, record))
        return out

    def records(self) -> list[dict[str, Any]]:
        """What the log holds (after a resume's trim: the run up to its checkpoint)."""
        return [record for _, record in self._records()]

    def log(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
