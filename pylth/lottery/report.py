"""What a researcher looks at: the table printed at the end and report.png."""
from __future__ import annotations

import io


def fid_label(records: list[dict]) -> str:
    kinds = {r.get("fid_features") for r in records}
    return "FID (classifier features)" if "classifier" in kinds else "FID"


def ticket_share(record: dict) -> float | None:
    """The ticket file's size over the dense state_dict file's (None for rounds from before ticket files)."""
    if record.get("ticket_bytes") is None or not record.get("dense_bytes"):
        return None
    return record["ticket_bytes"] / record["dense_bytes"]


def format_table(records: list[dict]) -> str:
    """One line per round: round, sparsity, FID, held-out loss, MACs and ticket file size against dense, seconds."""
    fid = fid_label(records)
    header = (f"{'round':>5}  {'sparsity':>8}  {fid:>25}  {'loss':>8}  {'MACs':>10}  {'of dense':>8}  "
              f"{'ticket':>9}  {'of dense':>8}  {'seconds':>7}")
    lines = [header, "-" * len(header)]
    for r in records:
        share = ticket_share(r)
        size = f"{r['ticket_bytes'] / 1e6:>7.2f}MB  {100 * share:>7.1f}%" if share is not None else f"{'-':>9}  {'-':>8}"
        lines.append(
            f"{r['round']:>5}  {100 * r['sparsity']:>7.2f}%  {r['fid']:>25.3f}  {r['loss']:>8.5f}  "
            f"{r['macs']:>10.4g}  {100 * r['macs'] / r['dense_macs']:>7.1f}%  {size}  {r['seconds']:>7.1f}"
        )
    return "\n".join(lines)


def render_report(records: list[dict], title: str = "") -> bytes:
    """report.png as bytes: FID against sparsity, the cost per round (MACs and ticket file size against
    dense), and each round's sparsity per module in forward order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_fid, ax_cost, ax_mod) = plt.subplots(1, 3, figsize=(17, 4.5))
    sparsity = [100 * r["sparsity"] for r in records]
    ax_fid.plot(sparsity, [r["fid"] for r in records], "o-")
    if records:
        ax_fid.axhline(records[0]["fid"], color="grey", linestyle="--", linewidth=1, label="dense (round 0)")
        ax_fid.legend(fontsize=7)
    for r, x in zip(records, sparsity):
        ax_fid.annotate(str(r["round"]), (x, r["fid"]), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax_fid.set_xlabel("sparsity (%)")
    ax_fid.set_ylabel(fid_label(records))
    ax_fid.set_title("sample quality per round")
    ax_fid.grid(alpha=0.3)

    rounds = [r["round"] for r in records]
    ax_cost.plot(rounds, [100 * r["macs"] / r["dense_macs"] for r in records], "o-", label="MACs per forward")
    sized = [(r["round"], 100 * ticket_share(r)) for r in records if ticket_share(r) is not None]
    if sized:
        ax_cost.plot(*zip(*sized), "s--", label="ticket file (ticket.safetensors)")
    ax_cost.set_xlabel("round")
    ax_cost.set_ylabel("% of the dense model")
    ax_cost.set_title("cost per round")
    ax_cost.grid(alpha=0.3)
    ax_cost.legend(fontsize=7)

    cmap = plt.get_cmap("viridis")
    modules = list(records[0]["module_sparsity"]) if records else []
    for i, r in enumerate(records):
        ax_mod.plot(range(len(modules)), [100 * r["module_sparsity"][m] for m in modules], ".-",
                    color=cmap(i / max(1, len(records) - 1)), label=f"round {r['round']}")
    ax_mod.set_xticks(range(len(modules)))
    ax_mod.set_xticklabels(modules, rotation=60, ha="right", fontsize=7)
    ax_mod.set_ylabel("sparsity (%)")
    ax_mod.set_title("sparsity per module (forward order)")
    ax_mod.grid(alpha=0.3)
    if 0 < len(records) <= 26:
        ax_mod.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
