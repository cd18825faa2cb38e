"""The API's JSON parser: DRF's, with a body nested too deeply for Python refused as bad input.

`[` x 50,000 makes json.loads raise RecursionError, which DRF does not catch (a 500)."""

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
