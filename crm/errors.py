"""The one error type that service functions raise.

A ``DomainError`` carries a message a person can act on, the fields it is about,
and a code that the API maps to an HTTP status (400, 403, 404, 409) and the
board shows in its dialog.
"""


class DomainError(Exception):
    code = "invalid"
    http_status = 400

    def __init__(self, message: str, *, fields: dict[str, str] | None = None) -> None:
        super().__init__(str(message))
        self.message = str(message)
        self.fields = {name: str(text) for name, text in (fields or {}).items()}

    def as_dict(self) -> dict:
        return {"code": self.code, "detail": self.message, "fields": self.fields}


class InvalidInput(DomainError):
    code = "invalid"
    http_status = 400


class Forbidden(DomainError):
    code = "forbidden"
    http_status = 403


class NotFound(DomainError):
    code = "not_found"
    http_status = 404


class Conflict(DomainError):
    code = "conflict"
    http_status = 409
