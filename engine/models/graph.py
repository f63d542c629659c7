"""Cutting any model in two by tracing it with torch.fx, as torchvision's feature extraction does: every node of the
traced graph has a qualified name (`layer1.0.relu_1`, or a module path such as `layer1` for the last node inside
that module), and a model is cut after a node where exactly one tensor crosses from the device part to the server
part: that tensor is what the device sends. Both parts are `torch.fx.GraphModule`s sharing the model's modules."""

from __future__ import annotations

from torch import fx, nn
from torchvision.models.feature_extraction import NodePathTracer

from engine.errors import UserError


class TracedModel:
    """A model's fx graph (traced in eval mode) with the qualified name of each of its nodes, in execution order."""

    def __init__(self, model: nn.Module) -> None:
        was = model.training
        model.eval()
        tracer = NodePathTracer()
        try:
            self.graph = tracer.trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure is the model's, said in one line
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise UserError(f"cannot trace {type(model).__name__} with torch.fx ({first[:160]}); a model must be "
                            "traceable to be split at a named point") from None
        finally:
            model.train(was)
        self.model = model
        self.nodes = [n for n in self.graph.nodes if n.op != "output"]
        self.names = {n: tracer.node_to_qualname.get(n, n.name) for n in self.nodes}

    def index(self, point: str) -> int:
        """The position of the node a point names: the node itself, or the last node inside the module it names.

        Args:
            point: a node's qualified name or a module path.
        Returns:
            the node's index in `nodes`; an unknown name is a UserError.
        """
        hits = [i for i, n in enumerate(self.nodes)
                if self.names[n] == point or self.names[n].startswith(point + ".")]
        if not hits:
            raise UserError(f"{type(self.model).__name__} has no node {point!r}; list its split points with "
                            "`python -m engine profile --model M --all-splits`")
        return hits[-1]

    def crossing(self, i: int) -> list[fx.Node]:
        """The tensors computed at or before node `i` that a later node reads (constants and parameters aside)."""
        before = set(self.nodes[: i + 1])
        later = self.nodes[i + 1:] + [n for n in self.graph.nodes if n.op == "output"]
        used = {a for n in later for a in n.all_input_nodes}
        return [n for n in self.nodes[: i + 1] if n in used and n in before and n.op != "get_attr"]

    def check(self, point: str) -> int:
        """The index of the node `point` names, when it is the one tensor crossing the cut after it.

        Args:
            point: a node's qualified name or a module path.
        Returns:
            the node's index; a UserError naming the crossing tensors otherwise.
        """
        i = self.index(point)
        crossing = self.crossing(i)
        if crossing != [self.nodes[i]]:
            names = ", ".join(self.names[n] for n in crossing) or "none"
            raise UserError(f"cannot split {type(self.model).__name__} at {point!r}: {len(crossing)} tensors cross "
                            f"there ({names}); a split point must have exactly one")
        return i

    def valid_points(self) -> list[str]:
        """Every point where exactly one tensor crosses, by its shortest name (the outermost module it ends)."""
        out = []
        for i, node in enumerate(self.nodes):
            if node.op in ("placeholder", "get_attr") or self.crossing(i) != [node]:
                continue
            out.append(self.shortest_name(i))
        return out

    def shortest_name(self, i: int) -> str:
        """The shortest prefix of node `i`'s qualified name that still names node `i`."""
        parts = self.names[self.nodes[i]].split(".")
        for k in range(1, len(parts) + 1):
            name = ".".join(parts[:k])
            if self.index(name) == i:
                return name
        return self.names[self.nodes[i]]

    def cut(self, point: str) -> tuple[fx.GraphModule, fx.GraphModule]:
        """The device part (input -> the tensor at `point`) and the server part (that tensor -> output).

        Args:
            point: a valid split point (`check`).
        Returns:
            two GraphModules sharing the model's modules and parameters.
        """
        i = self.check(point)
        device_graph, server_graph = fx.Graph(), fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for n in self.nodes[: i + 1]:
            env[n] = device_graph.node_copy(n, lambda a: env[a])
        device_graph.output(env[self.nodes[i]])
        server_env: dict[fx.Node, fx.Node] = {self.nodes[i]: server_graph.placeholder("feature")}

        def arg(a: fx.Node) -> fx.Node:
            if a not in server_env:  # a constant or parameter read on both sides
                server_env[a] = server_graph.node_copy(a, arg)
            return server_env[a]

        for n in list(self.graph.nodes)[i + 1:]:
            server_env[n] = server_graph.node_copy(n, arg)
        return self._module(device_graph, "DevicePart"), self._module(server_graph, "ServerPart")

    def _module(self, graph: fx.Graph, name: str) -> fx.GraphModule:
        gm = fx.GraphModule(self.model, graph, name)
        gm.train(self.model.training)
        return gm


def whole(model: nn.Module) -> fx.GraphModule:
    """The whole model as one traced GraphModule sharing its modules (the device part of `device_only`)."""
    traced = TracedModel(model)
    gm = fx.GraphModule(model, traced.graph, type(model).__name__)
    return gm.train(model.training)

