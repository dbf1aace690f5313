"""marshmallow schemas: the submit parameters (load) and the status JSON (dump)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, pre_load, validate

from .errors import BadRequest

LABEL_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_LABEL = validate.Regexp(
    LABEL_PATTERN, error="must be 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'"
)
_BOOL_TRUE = {"true", "True", "TRUE", "1", "yes", "on"}
_BOOL_FALSE = {"false", "False", "FALSE", "0", "no", "off"}


def _bool(**kwargs: Any) -> fields.Boolean:
    return fields.Boolean(truthy=_BOOL_TRUE, falsy=_BOOL_FALSE, **kwargs)


class ImportParametersSchema(Schema):
    """``POST /data/services/import`` parameters, from the query string or a form body."""

    class Meta:
        unknown = INCLUDE

    import_handler = fields.String(data_key="import-handler", load_default=None)
    path = fields.String(load_default=None)
    project_id = fields.String(data_key="PROJECT_ID", required=True, validate=_LABEL)
    subject_id = fields.String(data_key="SUBJECT_ID", load_default=None, validate=_LABEL)
    expt_label = fields.String(data_key="EXPT_LABEL", load_default=None, validate=_LABEL)
    cleanup_after_import = _bool(data_key="cleanupAfterImport", load_default=None)
    overwrite = fields.String(
        load_default="none", validate=validate.OneOf(["none", "append", "delete"])
    )
    rename = _bool(load_default=False)
    prevent_anon = _bool(load_default=False)
    auto_archive = _bool(data_key="AA", load_default=None)
    dest = fields.String(load_default=None)
    source = fields.String(data_key="SOURCE", load_default=None, validate=validate.Length(max=256))
    visit = fields.String(data_key="VISIT", load_default=None, validate=_LABEL)
    subtype = fields.String(data_key="SUBTYPE", load_default=None, validate=validate.Length(max=64))
    format = fields.String(load_default=None, validate=validate.OneOf(["txt", "json", "html"]))

    @pre_load
    def _aliases(self, data: Mapping[str, Any], **_: Any) -> dict[str, Any]:
        """``session`` is XNAT's legacy alias of EXPT_LABEL; ``auto-archive`` of ``AA``;
        ``project``/``subject`` of PROJECT_ID/SUBJECT_ID (the xnat client's ``import_`` sends
        those)."""
        out = dict(data)
        if "project" in out and "PROJECT_ID" not in out:
            out["PROJECT_ID"] = out["project"]
        if "subject" in out and "SUBJECT_ID" not in out:
            out["SUBJECT_ID"] = out["subject"]
        if "session" in out and "EXPT_LABEL" not in out:
            out["EXPT_LABEL"] = out["session"]
        if "auto-archive" in out and "AA" not in out:
            out["AA"] = out["auto-archive"]
        for key in ("SUBJECT_ID", "EXPT_LABEL", "VISIT", "dest", "AA", "cleanupAfterImport"):
            if out.get(key) == "":
                out.pop(key)
        return out


@dataclass(frozen=True)
class ImportParameters:
    """The validated submit parameters; ``raw`` keeps every submitted value as text."""

    import_handler: str | None
    path: str | None
    project_id: str
    subject_id: str | None
    expt_label: str | None
    cleanup_after_import: bool | None
    overwrite: str
    rename: bool
    prevent_anon: bool
    auto_archive: bool | None
    dest: str | None
    source: str | None
    visit: str | None
    subtype: str | None
    format: str | None
    raw: dict[str, str] = field(default_factory=dict)


_KNOWN = {f.name for f in ImportParametersSchema().fields.values() if f.name}


def load_import_parameters(raw: Mapping[str, str]) -> ImportParameters:
    """Validate submit parameters; a 400 naming each bad parameter on failure."""
    try:
        loaded = ImportParametersSchema().load(dict(raw))
    except ValidationError as exc:
        messages: dict[str, Any] = exc.normalized_messages()  # type: ignore[no-untyped-call]
        detail = "; ".join(
            f"{name}: {' '.join(map(str, msgs)) if isinstance(msgs, list) else msgs}"
            for name, msgs in sorted(messages.items())
        )
        raise BadRequest(f"invalid parameters: {detail}", errors=messages) from None
    known = {k: v for k, v in loaded.items() if k in _KNOWN}
    text = {k: str(v) for k, v in raw.items()}
    for alias, key in (("project", "PROJECT_ID"), ("subject", "SUBJECT_ID")):
        if alias in text:  # the job reads the recorded parameters by their XNAT names
            text.setdefault(key, text[alias])
    return ImportParameters(**known, raw=text)


class ProgressSchema(Schema):
    filesFound = fields.Integer()
    filesDone = fields.Integer()
    filesImported = fields.Integer()
    filesSkipped = fields.Integer()
    bytesDone = fields.Integer()


class SessionSchema(Schema):
    label = fields.String()
    subject = fields.String()
    studyInstanceUid = fields.String()
    destination = fields.String()
    url = fields.String()
    scans = fields.Integer()
    files = fields.Integer()


class FileErrorSchema(Schema):
    path = fields.String()
    reason = fields.String()


class HistoryEntrySchema(Schema):
    status = fields.String()
    at = fields.Integer()
    message = fields.String()


class ImportRequestSchema(Schema):
    """The status JSON of ``GET /xapi/dicom/<id>`` (CONTRACT section 3)."""

    id = fields.Integer()
    enabled = fields.Boolean()
    created = fields.Integer(metadata={"description": "epoch milliseconds"})
    timestamp = fields.Integer(metadata={"description": "epoch milliseconds of the last change"})
    username = fields.String()
    sessionPath = fields.String()
    status = fields.String(
        metadata={"enum": ["Queued", "Accepted", "Importing", "Processed", "Completed", "Failed"]}
    )
    cleanupAfterImport = fields.Boolean()
    clenaupAfterImport = fields.Boolean(
        metadata={"description": "misspelled as the xnat client reads it"}
    )
    resolution = fields.String()
    message = fields.String()
    handler = fields.String()
    project = fields.String()
    parameters = fields.Dict(keys=fields.String(), values=fields.String())
    progress = fields.Nested(ProgressSchema)
    sessions = fields.List(fields.Nested(SessionSchema))
    errors = fields.List(fields.Nested(FileErrorSchema))
    history = fields.List(fields.Nested(HistoryEntrySchema))


class ErrorSchema(Schema):
    """Every error answer: ``{code, status, message, errors}``."""

    code = fields.Integer()
    status = fields.String()
    message = fields.String()
    errors = fields.Dict()
