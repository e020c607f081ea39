"""Text tables and the matplotlib figure of the demo."""

import math

__all__ = ["format_fold", "format_pitfall", "format_table", "save_figure"]


def _table(header, rows):
    widths = [max(len(str(v)) for v in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def format_table(results, target=0.9):
    """One row per training run: final test accuracy, epochs to ``target``, diverged."""
    header = ["model", "BatchNorm", "init", "lr", "test acc", f"epochs to {target:.0%}",
              "diverged", "time"]
    rows = []
    for r in results:
        reached = r.epochs_to(target)
        rows.append([
            r.model,
            "yes" if r.batchnorm else "no",
            f"He x{r.init_scale:g}",
            f"{r.lr:g}",
            f"{r.final_acc:.3f}",
            "-" if reached is None else str(reached),
            f"yes (epoch {len(r.train_loss)})" if r.diverged else "no",
            f"{r.seconds:.1f} s",
        ])
    return _table(header, rows)


def format_fold(name, info):
    """Lines describing one folded network (see ``inference.compare_folded``)."""
    t0, t1 = info["seconds_unfolded"], info["seconds_folded"]
    same = "yes" if info["labels_identical"] else "NO"
    return "\n".join([
        f"{name}: {info['layers']} layers -> {info['layers_folded']} after folding",
        f"  max |logit difference| vs the unfolded eval network: {info['max_abs_diff']:.2e}"
        f" (logits up to {info['max_abs_logit']:.1f})",
        f"  identical predicted labels: {same} ({info['n_same']}/{info['n']})",
        f"  inference on {info['n']} samples: {1e3 * t0:.3f} ms unfolded, "
        f"{1e3 * t1:.3f} ms folded ({t0 / t1:.2f}x)",
    ])


def format_pitfall(name, info):
    """Lines describing ``inference.train_mode_pitfall``'s result."""
    lines = [f"{name}: eval mode (running statistics) test accuracy {info['eval_acc']:.3f}"]
    for row in info["train_mode"]:
        prefix = f"  train mode, batches of {row['batch_size']:>2}: "
        if "error" in row:
            kept = "unchanged" if row["state_unchanged"] else "CHANGED"
            lines.append(f"{prefix}ValueError: {row['error']}")
            lines.append(" " * len(prefix) + f"(running statistics {kept} by the failed call)")
        else:
            lines.append(f"{prefix}accuracy {row['acc']:.3f}")
    return "\n".join(lines)


def save_figure(results, path, title="BatchNorm (numbanorm) on scikit-learn digits"):
    """Training loss and test accuracy per epoch, with vs without BatchNorm, as a PNG.

    One column per (model, learning rate); solid lines with BatchNorm, dashed without;
    one colour per init scale; an x marks where a run diverged.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend, Agg canvas

    panels = []
    for r in results:
        key = (r.model, r.lr)
        if key not in panels:
            panels.append(key)
    inits = sorted({r.init_scale for r in results}, reverse=True)
    colors = dict(zip(inits, ["tab:blue", "tab:orange", "tab:green", "tab:red"], strict=False))

    fig = Figure(figsize=(3.4 * len(panels), 6.4), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False, sharex="col")
    for col, (model, lr) in enumerate(panels):
        ax_loss, ax_acc = axes[0, col], axes[1, col]
        for r in results:
            if (r.model, r.lr) != (model, lr):
                continue
            epochs = range(1, len(r.train_loss) + 1)
            style = dict(color=colors[r.init_scale], linestyle="-" if r.batchnorm else "--",
                         label=f"{'BN' if r.batchnorm else 'no BN'}, He x{r.init_scale:g}")
            loss = [v if math.isfinite(v) else float("nan") for v in r.train_loss]
            ax_loss.plot(epochs, loss, **style)
            ax_acc.plot(epochs, r.test_acc, **style)
            if r.diverged:
                ax_acc.plot([len(r.test_acc)], [r.test_acc[-1]], "x", color=style["color"],
                            markersize=9)
        ax_loss.set_title(f"{model}, lr {lr:g}")
        ax_loss.set_yscale("log")
        ax_acc.set_ylim(0, 1.02)
        ax_acc.axhline(0.9, color="grey", linewidth=0.7, linestyle=":")
        ax_acc.set_xlabel("epoch")
        if col == 0 or model != panels[0][0]:
            ax_loss.legend(fontsize=7)
    axes[0, 0].set_ylabel("training loss (log scale)")
    axes[1, 0].set_ylabel("test accuracy (eval mode)")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path
