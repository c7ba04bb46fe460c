"""The two naming rules: PyTorch module names and TF-Slim variable scopes.

PyTorch (torchvision's names for Inception-v3): a layer inside a named block is registered flat
on the block as `branch<tag>` when its branch has one conv, else `branch<tag>_<position>`, with
parallel layers sharing a position and told apart by a letter (`branch3x3_2a`,
`branch3x3_2b`); pools hold no weights and are not registered. A branch without a tag uses its
index. Layers outside branches carry their own `name`, or are `conv0`, `conv1`, ...

TF-Slim: `<Scope>/<Block>/Branch_<i>/<Op>_<g><letter>_<kh>x<kw>`: the letter counts the
branch's layers (pools too), and a stride-2 layer opens group 1 with letter `a` again
(`Conv2d_1a_3x3`). Top-level layers use their end-point name. The names the rule cannot give
are listed by each network (`Net(slim_renames=...)`).
"""

from __future__ import annotations

import string

from torch import nn

from incept.spec.nodes import Conv

_LETTERS = string.ascii_lowercase

# Our parameter suffix -> TF-Slim's variable suffix.
_SLIM_SUFFIXES = {
    "conv.weight": "weights",
    "depthwise.weight": "depthwise_weights",
    "pointwise.weight": "pointwise_weights",
    "pointwise.bias": "biases",
    "conv.bias": "biases",
    "bn.weight": "BatchNorm/gamma",
    "bn.bias": "BatchNorm/beta",
    "bn.running_mean": "BatchNorm/moving_mean",
    "bn.running_var": "BatchNorm/moving_variance",
    "weight": "weights",
    "bias": "biases",
}


class BranchNames:
    """Naming state while walking one branch of a block."""

    def __init__(self, tag: str | None, convs: int, slim: str):
        self.tag, self.convs, self.slim = tag, convs, slim
        self.position = 0
        self.parallel: int | None = None
        self.group = 0
        self.letter = 0

    def open_parallel(self) -> None:
        self.position += 1
        self.parallel = 0

    def next_parallel(self, index: int) -> None:
        self.parallel = index

    def close_parallel(self) -> None:
        self.parallel = None

    def torch_name(self) -> str:
        if self.parallel is None:
            self.position += 1
        if self.convs == 1:
            return f"branch{self.tag}"
        letter = "" if self.parallel is None else _LETTERS[self.parallel]
        return f"branch{self.tag}_{self.position}{letter}"

    def slim_name(self, op: str, kernel: tuple[int, int], stride: int) -> str:
        if stride > 1:
            self.group += 1
            self.letter = 0
        name = f"{op}_{self.group}{_LETTERS[self.letter]}_{kernel[0]}x{kernel[1]}"
        self.letter += 1
        return f"{self.slim}/{name}" if self.slim else name


class LevelNames:
    """A level of the module tree (the net, a block): registers layers and records each
    weighted layer's TF-Slim scope in `scopes` (module path -> scope)."""

    def __init__(self, scopes: dict, slim: str, renames: dict, module: nn.Module, path=""):
        self.scopes, self.slim, self.renames, self.module, self.path = (
            scopes,
            slim,
            renames,
            module,
            path,
        )
        self.root_slim = slim.split("/")[0]
        self.loose = BranchNames(None, 0, "")  # layers outside any branch
        self.loose_convs = 0

    def child(self, name: str, slim: str | None, module: nn.Module) -> LevelNames:
        self._add(name, module)
        level = LevelNames(
            self.scopes, f"{self.slim}/{slim or name}", self.renames, module, f"{self.path}{name}."
        )
        level.root_slim = self.root_slim
        return level

    def branch(self, tag: str | None, convs: int, index: int) -> BranchNames:
        return BranchNames(str(index) if tag is None else tag, convs, f"Branch_{index}")

    def register_leaf(self, node, module: nn.Module, branch: BranchNames | None) -> None:
        op = "Conv2d" if isinstance(node, Conv) else getattr(node, "op", "")
        names = branch or self.loose
        rule = names.slim_name(op, node.kernel, node.stride) if op else None
        if node.name is not None:
            name = node.name
        elif op != "Conv2d":
            return  # a pool: no weights, run by the program only
        elif branch is not None:
            name = branch.torch_name()
        else:
            name = f"conv{self.loose_convs}"
            self.loose_convs += 1
        self._add(name, module)
        if any(True for _ in module.parameters()):
            slim = node.slim or (rule if branch is not None or node.name is None else node.name)
            relative = f"{self.slim}/{slim}"[len(self.root_slim) + 1 :]
            self.scopes[self.path + name] = (
                f"{self.root_slim}/{self.renames.get(relative, relative)}"
            )

    def _add(self, name: str, module: nn.Module) -> None:
        if name in self.module._modules:
            raise ValueError(f"two layers named {self.path}{name}: give one of them a name")
        module.spec_name = name
        self.module.add_module(name, module)


def slim_variable_names(model, *, fixed_gammas: bool = False) -> dict[str, str]:
    """{state_dict key: TF-Slim variable name} for every weight and BN statistic of `model`
    (a SpecNet). BN's num_batches_tracked has no TF counterpart and is left out, and so is the
    gamma of a batch norm without scale (`bn_scale=False`, slim's default: its graph has no
    gamma, the value stays 1), unless `fixed_gammas` asks for those under the name slim would
    give them (a checkpoint reader sets them to 1)."""
    names = {}
    for key in model.state_dict():
        for path, scope in model.slim_scopes.items():
            if key.startswith(path + "."):
                local = key[len(path) + 1 :]
                suffix = _SLIM_SUFFIXES.get(local)
                fixed = local == "bn.weight" and not model.get_submodule(path).bn_scale
                if suffix is not None and (fixed_gammas or not fixed):
                    names[key] = f"{scope}/{suffix}"
                break
    return names
