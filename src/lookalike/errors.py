"""The one exception family lookalike raises for bad input, each with a kind.

The kind says what went wrong in one word, so callers act on it without reading the message:
the server maps it to an HTTP status code (lookalike.server.contract), the CLI prints the
message on one line. Messages speak of parameters and values, not of command-line flags.
"""


from collections.abc import Iterable


class LookalikeError(Exception):
    """Base class: a problem with the user's input, told in words they can act on."""

    #: "invalid" (a parameter or value not accepted), "unknown_item", "exists",
    #: "not_an_image", "too_large", "index_format" or "busy"
    kind = "invalid"


class CatalogError(LookalikeError):
    """The catalogue file or its columns are not usable."""


class ImageError(LookalikeError):
    """One image could not be decoded; the message is the skip reason."""

    kind = "not_an_image"


class ImageTooLargeError(ImageError):
    """An image over the pixel limit, refused before it is decoded."""

    kind = "too_large"


class IndexFormatError(LookalikeError):
    """A folder is not a lookalike index, is incomplete, or was built with another model."""

    kind = "index_format"


class UnknownItemError(LookalikeError, KeyError):
    """An item id that the index does not hold."""

    kind = "unknown_item"

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ItemExistsError(LookalikeError):
    """An item id that the index holds already, where a new one was asked for."""

    kind = "exists"


class BusyError(LookalikeError):
    """Too much work waits already (e.g. photos queued for the model); try again shortly."""

    kind = "busy"


def choose(value: str, names: Iterable[str], what: str) -> str:
    """``value`` when it is one of ``names``; else a :class:`LookalikeError` that lists them
    ("unknown index type 'x'; choose one of exact, hnsw, ...")."""
    names = list(names)
    if value not in names:
        raise LookalikeError(f"unknown {what} {value!r}; choose one of {', '.join(names)}")
    return value


def require_column(columns: Iterable[object], column: str, what: str,
                   error: type[LookalikeError] = LookalikeError) -> None:
    """Refuse ``column`` when ``columns`` lack it: "column 'x' (what) not found; the columns
    are: a, b" (``what``: the parameter that named it, e.g. ``id_column=``, or the file)."""
    columns = [str(c) for c in columns]
    if column not in columns:
        raise error(f"column {column!r} ({what}) not found; the columns are: "
                    f"{', '.join(columns) or '(none)'}")
