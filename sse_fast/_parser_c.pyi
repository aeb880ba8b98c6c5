# Type stub for the compiled parser: the same names as the pure-Python twin.
from ._parser_py import Event as Event
from ._parser_py import EventStreamParser as EventStreamParser

__all__ = ["Event", "EventStreamParser"]
