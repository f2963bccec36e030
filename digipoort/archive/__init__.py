"""The write-once non-repudiation archive (docs/archive.md).

Adapters call :func:`recorder` (once) and then ``exchange(...).received/answered`` per
request: the exact bytes received and answered, TLS facts and certificates, made durable
before the answer leaves. Days are closed with a signed manifest; ``digipoort archive
verify`` proves integrity and ``digipoort archive show`` prints an envelope's evidence.
"""

from __future__ import annotations

from digipoort.archive.recorder import Exchange, Recorder, disabled, recorder

__all__ = ["Exchange", "Recorder", "disabled", "recorder"]
