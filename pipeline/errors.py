"""Errors meant for people: the CLI prints them as one line, without a traceback."""


class TokenmillError(Exception):
    """A user-facing error (bad spec, bad input, failed stage); printed without a traceback."""

    exit_code = 1


class SpecError(TokenmillError):
    """The spec is invalid. ``problems`` holds one `path: message` line per problem."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class InputDataError(TokenmillError):
    """Bad input data under ``on_error: fail``; names the file and line."""

    def __init__(self, file: str, line: int | None, reason: str, detail: str = ""):
        self.file, self.line, self.reason, self.detail = file, line, reason, detail
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {reason}" + (f" ({detail})" if detail else ""))


class StageFailed(TokenmillError):
    """A stage raised; the message names the stage and the cause."""

    def __init__(self, stage: str, cause: str):
        self.stage, self.cause = stage, cause
        super().__init__(f"stage '{stage}' failed: {cause}")
