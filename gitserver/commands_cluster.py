"""SSH commands of the swarm runtime: ps:placement (where an app's tasks run) and nodes
(the swarm's machines; admins)."""

from __future__ import annotations

import argparse
from typing import Any

from gitserver.command import ArgumentParser, Context, app_arg, command


def _placement_args(p: ArgumentParser) -> None:
    app_arg(p)
    p.add_argument("constraints", nargs="*", metavar="CONSTRAINT",
                   help="Swarm constraints such as node.labels.pool==crews; none: show; "
                        "--clear: remove them all")
    p.add_argument("--clear", action="store_true", help="remove every constraint")


@command("ps:placement", "show or set where an app's tasks may run (Swarm constraints; a "
         "change rolls the app out again)", _placement_args, read=True)
async def ps_placement(ctx: Context, args: argparse.Namespace) -> int:
    wanted = [] if args.clear else (args.constraints or None)
    info = await ctx.platform.cluster.placement(ctx.user, args.app, wanted,
                                                ctx.reporter() if wanted is not None else None)
    if args.json:
        ctx.out_json(info)
    else:
        shown = ", ".join(info["constraints"]) or "anywhere (no constraints)"
        ctx.out(f"=== {info['app']} placement ({info['runtime']} runtime)")
        ctx.out(f"constraints: {shown}")
    return 0


def _node_row(node: dict[str, Any]) -> list[str]:
    labels = ",".join(f"{k}={v}" for k, v in sorted(node["labels"].items())) or "-"
    role = node["role"] + (" (leader)" if node.get("leader") else "")
    return [node["hostname"], node["id"], role, node["state"], node["availability"],
            node["address"], labels, str(node["crew_tasks"])]


@command("nodes", "list the swarm's nodes: state, availability, labels, crew tasks (admins)",
         read=True)
async def nodes(ctx: Context, args: argparse.Namespace) -> int:
    found = await ctx.platform.cluster.nodes(ctx.user)
    return ctx.listing(args.json, found, title="swarm nodes", row=_node_row,
                       empty="the swarm has no nodes",
                       headers=["HOSTNAME", "ID", "ROLE", "STATE", "AVAILABILITY", "ADDRESS",
                                "LABELS", "CREW TASKS"])
