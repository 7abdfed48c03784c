"""The benchmark's results as Markdown: one row per level, then memory and growth."""

from __future__ import annotations

from typing import Any

TABLE_HEAD = [
    "| streams | arrival | relayed tokens | direct TTFT p50/p99 ms | added TTFT p50 / p99 ms "
    "| direct per-token p50/p99 ms | added per-token p50 / p99 ms | lost / dup / out of order "
    "| server CPU | CPU-s per 1M tokens | KiB per idle / streaming socket "
    "| DB writes per reply (statements / transactions) | flushes per s "
    "| stand-in late p99 ms | client lag p99 ms | other processes' CPU | reference loop ms "
    "| held |",
    "|---:|---|---:|---|---|---|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|",
]


def kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f}"


def num(value: float | None, digits: int = 1, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def limit_line(mode: str, limit: dict[str, Any]) -> str:
    if limit["failed"] is None:
        return f"Limit ({mode}): every level held; none above it to bisect toward."
    if not limit["held"]:
        return f"Limit ({mode}): no level held; nothing to bisect from."
    probes = f" (probes: {', '.join(map(str, limit['probes']))})" if limit["probes"] else ""
    return f"Limit ({mode}): {limit['held']} streams held, {limit['failed']} not{probes}."


def one_line(level: dict[str, Any]) -> str:
    added = level["added_ms"]
    server = level["server"]
    return (
        f"added TTFT p50/p99 {num(added['ttft_p50'], 2, True)}/{num(added['ttft_p99'], 2, True)} "
        f"ms, added per-token p50/p99 {num(added['token_p50'], 2, True)}/"
        f"{num(added['token_p99'], 2, True)} ms, faults {level['faults']}, "
        f"CPU {num(server['cpu_share'] and server['cpu_share'] * 100, 0)}%, "
        f"{num(server['cpu_s_per_million_tokens'], 0)} CPU-s/1M tokens, "
        f"client lag p99 {num(level['client']['loop_lag_p99_ms'], 1)} ms, "
        f"stand-in late p99 {num(level['stand_in']['lateness_ms']['p99'], 1)} ms, "
        f"stand-in CPU {num((level['stand_in'].get('cpu_share') or 0) * 100, 0)}%, "
        f"client CPU {num((level['client']['cpu_share'] or 0) * 100, 0)}%, "
        f"other processes {num((level.get('others_cpu_share') or 0) * 100, 0)}% of a core, "
        f"reference loop {num(level.get('reference_loop_ms'), 1)} ms"
    )


def markdown(results: dict[str, Any]) -> str:
    env = results.get("environment", {})
    options = env.get("options", {})
    lines: list[str] = []
    if env:
        versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        lines += [
            f"Run {env['date']} on {env['cpu']} ({env['cores']} cores, {env['memory_gib']} GiB), "
            f"Linux {env['kernel']}, Python {env['python']}; {versions}.",
            "",
            f"Command: `{env['command']}`",
            "",
            f"Server: {options.get('server')} on core {options.get('server_core')}; load client "
            f"and stand-in on core {options.get('client_core')}. Each stream: "
            f"{options.get('tokens')} tokens every {num(options.get('interval_ms'), 1)} ms after "
            f"a {num(options.get('ttft_ms'), 0)} ms time to first token. "
            + (
                f"A burst's sends arrive within {num(options.get('burst_ms'), 0)} ms. "
                if options.get("burst_ms")
                else "A burst's sends arrive at once. "
            )
            + f"Direct client: {options.get('direct_client')}."
            + (
                " **A/A check: both cohorts read the stand-in directly.**"
                if options.get("aa")
                else ""
            )
            + (
                " Runtime patches switched off (RUNTIME_PATCHES_OFF): "
                + ", ".join(options["runtime_patches_off"])
                + "."
                if options.get("runtime_patches_off")
                else ""
            ),
            "",
        ]
    if results.get("levels"):
        lines += TABLE_HEAD
    for level in results.get("levels", []):
        cohorts = level["cohorts"]
        relayed = cohorts.get("relayed") or cohorts.get("direct-b")
        direct = cohorts["direct"]
        added = level["added_ms"]
        server = level["server"]
        db = level["db"]
        integrity = relayed["integrity"]
        failed = sum(n for s, n in relayed["statuses"].items() if s != "complete")
        faults = f"{integrity['lost']} / {integrity['duplicated']} / {integrity['out_of_order']}"
        if failed or relayed["corrupt"]:
            faults += f" ({failed} failed, {relayed['corrupt']} corrupt)"
        lines.append(
            f"| {level['streams']} | {level['mode']} | {relayed['tokens']} "
            f"| {num(direct['ttft_ms']['p50'], 1)} / {num(direct['ttft_ms']['p99'], 1)} "
            f"| {num(added['ttft_p50'], 2, True)} / {num(added['ttft_p99'], 2, True)} "
            f"| {num(direct['token_ms']['p50'], 2)} / {num(direct['token_ms']['p99'], 2)} "
            f"| {num(added['token_p50'], 2, True)} / {num(added['token_p99'], 2, True)} "
            f"| {faults} "
            f"| {num(server['cpu_share'] and server['cpu_share'] * 100, 0)}% "
            f"| {num(server['cpu_s_per_million_tokens'], 0)} "
            f"| {kib(server['rss_per_idle_socket'])} / {kib(server['rss_per_streaming_socket'])} "
            f"| {num(db['write_statements_per_reply'], 1)} / "
            f"{num(db['write_transactions_per_reply'], 1)} "
            f"| {num(db['flushes_per_s'], 2)} "
            f"| {num(level['stand_in']['lateness_ms']['p99'], 1)} "
            f"| {num(level['client']['loop_lag_p99_ms'], 1)} "
            f"| {num((level.get('others_cpu_share') or 0) * 100, 0)}% "
            f"| {num(level.get('reference_loop_ms'), 1)} "
            f"| {'yes' if level['held'] else 'no'} |"
        )
    held = [lv["streams"] for lv in results.get("levels", []) if lv["held"]]
    by_mode: dict[str, list[int]] = {}
    for level in results.get("levels", []):
        if level["held"]:
            by_mode.setdefault(level["mode"], []).append(level["streams"])
    if results.get("levels"):
        lines.append("")
        lines.append(
            "Largest level held (added per-token p99 under 20 ms, nothing lost): "
            + (
                ", ".join(f"{max(v)} streams ({mode})" for mode, v in by_mode.items())
                if held
                else "none"
            )
            + "."
        )
    lines += [limit_line(mode, limit) for mode, limit in results.get("limits", {}).items()]
    idle = results.get("idle")
    if idle:
        lines += [
            "",
            f"Idle sockets: {idle['sockets']} open add {kib(idle['rss_open'] - idle['rss_before'])}"
            f" KiB RSS, **{kib(idle['per_socket'])} KiB per idle socket** "
            f"(RSS {kib(idle['rss_before'])} KiB before, {kib(idle['rss_open'])} KiB open, "
            f"{kib(idle['rss_after_close'])} KiB after closing them).",
        ]
        if "gc_objects_per_socket" in idle:
            lines.append(
                f"Each idle socket adds {idle['gc_objects_per_socket']:.0f} objects the garbage "
                f"collector tracks ({idle['gc_objects_before']} before they opened)."
            )
    growth = results.get("growth")
    if growth:
        points = growth["checkpoints"]
        lines += [
            "",
            f"Growth: {growth['cycles']} connect/stream/disconnect cycles "
            f"({growth['concurrency']} at a time, {growth['tokens_per_reply']} tokens each, "
            f"{growth['seconds']} s, {growth['faults']} faulty"
            + (
                f": {'; '.join(f'{n} x {e}' for e, n in growth.get('errors', {}).items())}"
                if growth.get("errors")
                else ""
            )
            + "): RSS "
            + " → ".join(f"{kib(p['rss'])} KiB @{p['cycles']}" for p in points)
            + f"; after warm-up {kib(growth['growth_after_warmup'])} KiB "
            f"({num(growth['growth_per_cycle'], 1)} bytes per cycle). At the end: "
            f"{points[-1]['tasks']} tasks, {points[-1]['generations']} generations, "
            f"{points[-1]['layer_channels']} channel-layer channels, "
            f"{points[-1]['layer_groups']} groups, gc objects "
            + " → ".join(str(p["gc_objects"]) for p in points)
            + ".",
        ]
    return "\n".join(lines) + "\n"
