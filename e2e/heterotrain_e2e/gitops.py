"""The chart's Argo CD health check (Lua), run as Argo CD runs it, by a real Lua interpreter (lupa)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HEALTH_LUA = REPO / "charts" / "heterotrain" / "argocd" / "health.lua"


def argocd_health(obj: dict[str, Any], script: Path = HEALTH_LUA) -> dict[str, str]:
    """A global ``obj`` (the live object) and the returned table ``hs``: its status and message."""
    import lupa

    lua = lupa.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value: Any) -> Any:
        # JSON-shaped data as Lua tables: lists 1-based, as Argo CD's gopher-lua conversion makes them.
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    lua.globals().obj = to_lua(obj)
    hs = lua.execute(script.read_text())
    return {"status": str(hs["status"]), "message": str(hs["message"] or "")}
