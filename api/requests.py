"""The API's request: JSON bodies decoded exactly — a JSON number with a fraction or an exponent becomes a Decimal
straight from its digits, never a float (contract §4)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import SerializationException
from litestar.types import Empty

# litestar decodes a body to Python values before converting them to the handler's type, and its decoder makes
# floats: 12345678901234567.89 arrived as 12345678901234568 and 1e400 was refused as "Number out of range" with a
# generic 400. With float_hook the number's own text becomes the Decimal; the type's rules then judge it.
_EXACT = msgspec.json.Decoder(float_hook=Decimal)


class ExactJsonRequest(Request):
    async def json(self) -> Any:
        if self._json is Empty:
            state = self._connection_state
            if state.json is Empty:
                try:
                    state.json = _EXACT.decode(await self.body() or b"null")
                except msgspec.DecodeError as error:
                    raise SerializationException(str(error)) from error
                except RecursionError:
                    raise SerializationException("JSON is nested too deeply") from None
            self._json = state.json
        return self._json
