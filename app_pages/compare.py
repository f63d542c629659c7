"""Compare two to four pinned variants or baselines: what differs between them, with deltas against the first,
and where they sit on the communication-computation plane."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import ui
from engine.figures import plane_figure
from engine.knobs import knob_text
from engine.latency import latency_table
from engine.pareto import DECISION_COLUMN, compare_table

COLUMNS = ("method", "split", "knobs", DECISION_COLUMN, "accuracy", "latency", "t_device", "t_transmit", "t_server",
           "feasible", "device_flops", "server_flops", "device_memory_bytes", "bits_actual", "bits_ideal", "bits_raw",
           "feature_shape", "width", "seed", "trained_on", "measured_on", "code_version")
LETTERS = "ABCD"

env, data, base, table = ui.open_page("Compare variants", "the variants to compare")

lat = latency_table(table, env.device, env.server, env.rate_bps, delay_s=env.delay_s)


def _label(row: dict) -> str:
    knobs = row.get("knobs") if isinstance(row.get("knobs"), dict) else {}
    return (f"{row['method']} @ {row['split']}" + "".join(f" · {k}={x}" for k, x in sorted(knobs.items()))
            + f" · validation {ui.percent(row.get(DECISION_COLUMN), '.1%')} · test {ui.percent(row['accuracy'], '.1%')}"
            + f" · {row['id'][:8]}")


@st.cache_data(max_entries=4, show_spinner=False)
def _labels(store: tuple, base_id: str, _table: pd.DataFrame) -> dict[str, str]:
    """Each row's label, by id, in the table's order (once per version of the store: thousands of rows)."""
    columns = [c for c in ("id", "method", "split", "knobs", DECISION_COLUMN, "accuracy") if c in _table]
    return {r["id"]: _label(r) for r in (dict(zip(columns, values, strict=True))
                                         for values in zip(*(_table[c] for c in columns), strict=True))}


labels = _labels(ui.store_key(), base.id, table)
baselines = [i for i, s in zip(lat["id"], lat["split"], strict=True) if s in ("server_only", "device_only")]
sel = ui.selected_id()


def _pin(extra: list[str]) -> None:
    """Add variants to the pins (at most four), from a button's callback, before the multiselect is drawn."""
    pins = list(dict.fromkeys([*st.session_state.get("w_pins", []), *extra]))[:4]
    st.session_state["w_pins"] = pins


def _family(variant_id: str | None) -> list[str]:
    """The selected variant and those of its parents that are measured (a pruned and coded `three_step` row: its
    coding unpruned, its snapshot uncoded, the `original` split), in that order; [] when it has none measured."""
    if not variant_id or variant_id not in labels:
        return []
    parents = ui.variant_parents(table, variant_id)
    return [variant_id, *(p for p in parents.values() if p in labels)] if parents else []


key = ui.bind("pins", lambda: [i for i in ui.pinned_ids() if i in labels])
st.session_state[key] = [i for i in st.session_state[key] if i in labels]
family = _family(sel)
c1, c2, c3 = st.columns(3)
c1.button("Pin the selected variant", disabled=not sel or sel not in labels, on_click=_pin, args=([sel],),
          help="click a point on any plane to select a variant")
c2.button("Pin it with its parents", disabled=len(family) < 2, on_click=lambda: st.session_state.update(
          {key: family}), help="a pruned and coded three_step variant beside its coding on the unpruned split, its "
          "snapshot sent 8-bit + Huffman, and the original split: what each step bought")
c3.button("Pin the baselines (server only, device only)", disabled=not baselines, on_click=_pin, args=(baselines,))
pins = st.multiselect("Pinned variants (two to four; the first is the reference of the deltas)", list(labels),
                      default=st.session_state[key], max_selections=4, format_func=labels.get, key=key)
ui.set_view(pins=",".join(pins))
if len(pins) < 2:
    st.info("Pin two to four variants to compare them: pick them above, or select a point on a plane and pin it.")
    st.stop()

diff = compare_table(lat, pins, [c for c in COLUMNS if c in lat])
diff.index = [f"{LETTERS[i]} · {labels[p]}" for i, p in enumerate(pins)]
if diff.empty or len(diff.columns) == 0:
    st.info("The pinned variants are identical in every column.")
else:
    st.caption(f"Only the columns that differ; Δ is the difference from A. Latency at {env.rate_bps / 8e3:g} kB/s"
               f"{f' with {env.delay_s * 1e3:g} ms of delay' if env.delay_s else ''} on "
               f"{env.device.describe()} and {env.server.describe()}.")
    if "knobs" in diff.columns:
        diff["knobs"] = diff["knobs"].map(knob_text)
    st.dataframe(diff, column_config={c: st.column_config.NumberColumn(format="%.4g") for c in diff.columns
                                      if c.startswith("Δ ")})
need, png, highlight = ui.threshold(env, table), ui.png_bits(table, data), {p: LETTERS[i] for i, p in enumerate(pins)}
ui.chart(lambda: plane_figure(lat, png, threshold=need, front="none", selected=sel, highlight=highlight, height=380),
         "compare_plane", deps=(base.id, env, png, need, sel, tuple(highlight.items())))
