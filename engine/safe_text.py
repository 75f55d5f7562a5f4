"""Text that is safe to print or log: credentials redacted from every URI form, control
characters escaped so that a value (a level, a column name) can never start a new line.

:func:`redact` is applied by :func:`engine.log.event` to every message and string field, in
both log formats, so an error that echoes a path flag (an unsupported scheme, a refused
``--scheduler``) never shows a password or a signed URL's signature.
:func:`printable` is applied to every human-readable line that carries a name from the data.
"""

from __future__ import annotations

import re

#: ``scheme://user:password@host`` or ``scheme://token@host``: the userinfo part, any scheme.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<info>[^/\s@?#'\"]+)@")
#: Query parameters that carry secrets (pre-signed S3, Azure SAS, GCS signed URLs, tokens).
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:X-Amz-[A-Za-z-]+|X-Goog-[A-Za-z-]+|AWSAccessKeyId|Signature|sig|se|sp|sv|skoid|sktid|"
    r"token|access_token|api_key|apikey|key|password|secret|credential|sas)=)(?P<value>[^&#\s'\"]*)",
    re.IGNORECASE)
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with URI userinfo and secret-bearing query values replaced by ``***``."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group('key')}{REDACTED}", text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` on one line: newlines, tabs and other control characters written as escapes."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
