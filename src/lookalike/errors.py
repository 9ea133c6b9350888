"""The one exception family lookalike raises for bad input; the CLI turns it into one line."""


class LookalikeError(Exception):
    """Base class: a problem with the user's input, told in words they can act on."""


class CatalogError(LookalikeError):
    """The catalogue file or its columns are not usable."""


class ImageError(LookalikeError):
    """One image could not be decoded; the message is the skip reason."""


class IndexFormatError(LookalikeError):
    """A folder is not a lookalike index, is incomplete, or was built with another model."""


class UnknownItemError(LookalikeError, KeyError):
    """An item id that the index does not hold."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ItemExistsError(LookalikeError):
    """An item id that the index holds already, where a new one was asked for."""
