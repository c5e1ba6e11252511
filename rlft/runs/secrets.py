"""Credentials inside URLs (`s3://KEY:SECRET@bucket/...`, `http://user:password@host`) are masked before any
text reaches MLflow, a printed line or an error message."""

import re

USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][\w+.-]*://)[^/@\s'\"]+@")


def redact(text: str) -> str:
    """`text` with the user and password of every URL in it replaced by ***."""
    return USERINFO.sub(r"\g<scheme>***@", text)
