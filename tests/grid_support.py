"""What AppTests read from the browser maps (components/attention_grid): their arguments and payload."""

from __future__ import annotations

import json
from typing import Any

from explorer.attention_payload import MapPayload


def grids(at) -> dict[str, tuple[dict[str, Any], MapPayload]]:
    """Every attention-grid component of an AppTest run by its key: (JSON arguments, decoded payload)."""
    found = {}
    for element in at.get("component_instance"):
        proto = element.proto
        if not proto.component_name.endswith("attention_grid"):
            continue
        args = json.loads(proto.json_args)
        blobs = {a.key: a.bytes for a in proto.special_args}
        found[args["key"]] = (args, MapPayload.from_args(args["meta"], blobs))
    return found
