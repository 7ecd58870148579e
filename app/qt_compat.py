"""Work-arounds for reference-counting bugs in the Qt binding, applied once on import.

PySide6 6.12.0 on Python < 3.12 returns some objects without taking a new reference:
`SignalInstance.emit()` returns `True`, and `QCoreApplication.processEvents()` and
`QObject.deleteLater()` return `None`, each time dropping one reference that the caller
then releases. Every call (ours, pyqtgraph's and pytest-qt's) brings the interpreter closer
to aborting with "deallocating True or False" / "deallocating None". Each function is probed
here, and wrapped to give its result the missing reference only when the probe shows the
bug; on fixed versions (and on Python 3.12+, where True and None are immortal) nothing is
patched. The project pins a PySide6 without the bug; this keeps a bad install usable.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QCoreApplication, QObject, Signal, SignalInstance

PROBE_CALLS = 64


class _Probe(QObject):
    ping = Signal()


def _lost_references(call: Callable[[], Any], value: object) -> int:
    """References to `value` lost by PROBE_CALLS calls of `call` (repaired afterwards)."""
    before = sys.getrefcount(value)
    for _ in range(PROBE_CALLS):
        call()
    lost = before - sys.getrefcount(value)
    for _ in range(max(0, lost)):  # repair the probe's own damage
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(value))
    return lost


def _with_reference(original: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(result))  # the reference PySide forgot
        return result

    wrapper.__doc__ = original.__doc__
    wrapper.__name__ = getattr(original, "__name__", "wrapper")
    return wrapper


def _apply() -> list[str]:
    patched: list[str] = []
    probe = _Probe()
    if _lost_references(probe.ping.emit, True) >= PROBE_CALLS // 2:
        SignalInstance.emit = _with_reference(SignalInstance.emit)
        patched.append("SignalInstance.emit")
    if _lost_references(lambda: _Probe().deleteLater(), None) >= PROBE_CALLS // 2:
        QObject.deleteLater = _with_reference(QObject.deleteLater)
        patched.append("QObject.deleteLater")
    if _lost_references(QCoreApplication.processEvents, None) >= PROBE_CALLS // 2:
        QCoreApplication.processEvents = staticmethod(
            _with_reference(QCoreApplication.processEvents)
        )
        patched.append("QCoreApplication.processEvents")
    return patched


PATCHED: list[str] = _apply()
EMIT_PATCHED: bool = "SignalInstance.emit" in PATCHED
