"""A reader of mmoe-wgpu checkpoints written from docs/checkpoint.md alone.

    pip install numpy safetensors
    python docs/checkpoint_reference.py MODEL.safetensors ROWS.csv

prints each task's predictions (regression: the value; classification: the
probability) for the rows of a CSV of numeric inputs, one column per task, then
one pCTCVR column per ESMM pair. For a
model with categorical fields the CSV needs a header naming its columns: the dense
inputs (by their `dense_inputs` names, raw values standardised as the checkpoint
says; without `dense_inputs`, the first `inputs` columns as the model takes them),
and each field by its name, holding raw values (encoded by the checkpoint's
`vocabulary`; a value of digits only is looked up as an integer when the field's
vocabulary holds no string of that spelling), or, without an encoder, IDs; a
single-valued field's cell is one value, a multi-valued field's bag is its cell's
values separated by spaces, and a weighted field's values are written
`value:weight`. As a module: `load`, `encode`,
`model_input`, `forward`, `losses`, and `save` (which writes the checksum).
Computes in float64.
"""

import json
import struct
import sys
import zlib

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

METADATA_KEY = "mmoe_wgpu"


def load(path):
    """(tensors, description) of a checkpoint, the optional fields filled in."""
    tensors = load_file(path)
    with safe_open(path, "np") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    if meta["format"] != "mmoe-wgpu checkpoint" or meta["version"] != 1:
        raise ValueError(f"{path}: not a version 1 mmoe-wgpu checkpoint")
    arch = meta["config"]["architecture"]
    if arch["kind"] in ("mmoe", "omoe"):
        gate = arch.setdefault("gate", {"kind": "softmax", "balance_weight": 0.0})
        gate.setdefault("noisy", False)
        gate.setdefault("balance_loss", "importance")
        gate.setdefault("selection", "per_gate")
        if arch["kind"] == "mmoe":
            arch.setdefault("task_experts", 0)
    for field in meta["config"].get("fields", []):
        field.setdefault("weighted", False)
    return tensors, meta


def fnv1a64(data):
    """FNV-1a, 64 bits, of bytes."""
    h = 0xcbf29ce484222325
    for c in data:
        h = ((h ^ c) * 0x100000001b3) % (1 << 64)
    return h


def encode(meta, field, value):
    """The ID of a raw value (a str or an int) in field `field`, by the checkpoint's
    encoder: a vocabulary (1-based place, 0 out of vocabulary) or a hash bucket."""
    encoder = meta.get("vocabulary", {})[field]
    if encoder["kind"] == "hash":
        data = value.to_bytes(8, "little") if isinstance(value, int) else value.encode()
        return fnv1a64(data) % encoder["buckets"]
    ids = _VOCABULARIES.get(id(encoder))
    if ids is None:
        # Keys tell a string from an integer: "17" is not 17.
        ids = {(type(v), v): i + 1 for i, v in enumerate(encoder["values"])}
        _VOCABULARIES[id(encoder)] = ids
    return ids.get((type(value), value), 0)


_VOCABULARIES = {}  # a vocabulary's IDs by value, per encoder object


def model_input(tensors, config, dense, fields):
    """The input rows x [B, I]: the dense features, then each field's pooled
    embedding. `fields` maps each field's name to its IDs: an int array [B] for a
    single-valued field, (offsets [B + 1], ids) for a multi-valued one, with a third
    member of weights for a weighted field (a single-valued weighted field: (ids,
    weights))."""
    parts = [np.asarray(dense, np.float64).reshape(-1, config["inputs"])]
    rows = parts[0].shape[0]
    for field in config.get("fields", []):
        table = tensors["embeddings.%s.weight" % field.get("shares", field["name"])]
        table = table.astype(np.float64)
        given = fields[field["name"]]
        values = field["values"]
        if values["kind"] == "single":
            ids, weights = (given if field["weighted"] else (given, None))
            offsets = np.arange(rows + 1)
        else:
            offsets, ids = given[0], given[1]
            weights = given[2] if field["weighted"] else None
        ids = np.asarray(ids, np.int64)
        weights = np.ones(len(ids)) if weights is None else np.asarray(weights, np.float64)
        pooled = np.zeros((rows, field["dim"]))
        for b in range(rows):
            lo, hi = int(offsets[b]), int(offsets[b + 1])
            for k in range(lo, hi):
                pooled[b] += weights[k] * table[ids[k]]
            if values["kind"] == "multi" and values["pooling"] == "mean" and hi > lo:
                pooled[b] /= hi - lo
        parts.append(pooled)
    return np.concatenate(parts, axis=1)


def save(tensors, meta, path):
    """Writes a checkpoint with its crc32 computed as the document says."""
    meta = {k: v for k, v in meta.items() if k != "crc32"}
    text = json.dumps(meta, separators=(",", ":"))
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    save_file(arrays, path, metadata={METADATA_KEY: text})
    raw = open(path, "rb").read()
    data = raw[8 + struct.unpack("<Q", raw[:8])[0]:]
    crc = zlib.crc32(data + text[:-1].encode())
    save_file(arrays, path, metadata={METADATA_KEY: text[:-1] + ',"crc32":%d}' % crc})


def relu(v):
    return np.maximum(v, 0.0)


def softplus(v):
    return np.maximum(v, 0.0) + np.log1p(np.exp(-np.abs(v)))


def sigmoid(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))


def layer(t, name, group, v):
    return v @ t[name + ".weight"][group] + t[name + ".bias"][group]


def expert_columns(config, experts, width):
    """Per expert, the columns (start, end) of the input row it reads: all of
    them, or its run's subset from `expert_inputs` (a column range, or adjacent
    fields, whose columns follow the dense inputs in field order)."""
    runs = config.get("expert_inputs", [])
    if not runs:
        return [(0, width)] * experts
    first = {}
    at = config["inputs"]
    for f in config.get("fields", []):
        first[f["name"]] = (at, at + f["dim"])
        at += f["dim"]
    out = []
    for run in runs:
        if "columns" in run:
            span = tuple(run["columns"])
        else:
            names = run["fields"]
            span = (first[names[0]][0], first[names[-1]][1])
        out += [span] * run["experts"]
    return out


def seen_experts(config):
    """Per gate, the expert numbers it sees; and E, the number of all experts."""
    arch, tasks = config["architecture"], len(config["tasks"])
    shared = arch["experts"]
    if arch["kind"] == "omoe":
        return [list(range(shared))], shared
    own = arch["task_experts"]
    return [list(range(shared)) + [shared + t * own + j for j in range(own)]
            for t in range(tasks)], shared + tasks * own


def softmax_over(q, keep):
    """Rows of weights [B, E]: the softmax of each row of q over the experts `keep`
    (a list per row), 0 elsewhere."""
    p = np.zeros_like(q)
    for b, kept in enumerate(keep):
        top = max(q[b, e] for e in kept)
        total = sum(np.exp(q[b, e] - top) for e in kept)
        for e in kept:
            p[b, e] = np.exp(q[b, e] - top) / total
    return p


def ple_levels(t, arch, z, tasks):
    """The task outputs of the last level of a PLE model, a list of T [B, h]."""
    levels = arch["levels"]
    blocks = [z] * (tasks + 1)  # each task's input, then the shared input
    for l, level in enumerate(levels):
        pre = "" if len(levels) == 1 else f"levels.{l}."
        s, n, gate = level["shared_experts"], level["task_experts"], level["gate"]
        experts = s + tasks * n
        o = []
        for e in range(experts):
            v = blocks[tasks] if e < s else blocks[(e - s) // n]
            for i in range(len(level["expert_layers"])):
                v = relu(layer(t, f"{pre}experts.{i}", e, v))
            o.append(v)
        last = l == len(levels) - 1
        outputs = []
        for g in range(tasks if last else tasks + 1):
            shared_gate = g == tasks or n == 0
            seen = (list(range(experts)) if shared_gate
                    else list(range(s)) + [s + g * n + j for j in range(n)])
            rows = blocks[g].shape[0]
            if gate["kind"] == "static":
                q = np.broadcast_to(t[f"{pre}gate.bias"][g], (rows, experts))
            else:
                q = layer(t, f"{pre}gate", g, blocks[g])
            k = len(seen)
            # k equal to what a task gate sees is the dense gate, for the shared too.
            if gate["kind"] == "top_k" and gate["k"] < s + n:
                k = gate["k"]
            keep = [[seen[i] for i in top_k([q[b, e] for e in seen], k)] for b in range(rows)]
            p = softmax_over(q, keep)
            outputs.append(sum(p[:, e:e + 1] * o[e] for e in range(experts)))
        blocks = outputs
    return blocks[:tasks]


def top_k(values, k):
    """Indices of the k largest values; equal values: lower index first."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return order[:k]


def forward(tensors, config, x, eps=None):
    """Head outputs [T, B] (logits for classification), gate weights p [G, B, E]
    and the logits q [G, B, E] the selection used (None for PLE). `eps`
    ([G, B, E]) is a noisy gate's training draws; without it, no noise (inference)."""
    t = {k: v.astype(np.float64) for k, v in tensors.items()}
    z = np.asarray(x, dtype=np.float64)
    rows, tasks = z.shape[0], len(config["tasks"])
    for i in range(len(config["shared_layers"])):
        z = relu(layer(t, f"shared.{i}", 0, z))
    arch = config["architecture"]
    p = q = None
    if arch["kind"] == "shared_bottom":
        r = z
        for i in range(len(arch["bottom_layers"])):
            r = relu(layer(t, f"bottom.{i}", 0, r))
        inputs = [r] * tasks
    elif arch["kind"] == "ple":
        inputs = ple_levels(t, arch, z, tasks)
    else:
        seen, experts = seen_experts(config)
        gates, gate = len(seen), arch["gate"]
        o = []
        columns = expert_columns(config, experts, z.shape[1])
        for e in range(experts):
            start, end = columns[e]
            v = z[:, start:end]
            for i in range(len(arch["expert_layers"])):
                if i == 0:
                    # Rows of a narrow window's weights past its width are padding.
                    w = t["experts.0.weight"][e][: end - start]
                    v = relu(v @ w + t["experts.0.bias"][e])
                else:
                    v = relu(layer(t, f"experts.{i}", e, v))
            o.append(v)
        q = np.empty((gates, rows, experts))
        for g in range(gates):
            if gate["kind"] == "static":
                q[g] = t["gate.bias"][g]
            else:
                q[g] = layer(t, "gate", g, z)
            if gate["noisy"] and eps is not None:
                q[g] += eps[g] * softplus(layer(t, "gate.noise", g, z))
        k = gate["k"] if gate["kind"] == "top_k" else None
        p = np.zeros_like(q)
        for b in range(rows):
            if k is not None and gate["selection"] == "shared":
                shared = top_k([sum(q[g, b, e] for g in range(gates))
                                for e in range(experts)], k)
            for g in range(gates):
                if k is None:
                    keep = seen[g]
                elif gate["selection"] == "shared":
                    keep = shared
                else:
                    keep = [seen[g][i] for i in top_k([q[g, b, e] for e in seen[g]], k)]
                top = max(q[g, b, e] for e in keep)
                total = sum(np.exp(q[g, b, e] - top) for e in keep)
                for e in keep:
                    p[g, b, e] = np.exp(q[g, b, e] - top) / total
        mixtures = [sum(p[g, :, e:e + 1] * o[e] for e in range(experts))
                    for g in range(gates)]
        inputs = mixtures if arch["kind"] == "mmoe" else [mixtures[0]] * tasks
    out = np.empty((tasks, rows))
    for task in range(tasks):
        w = inputs[task]
        for i in range(len(config["tower_layers"])):
            w = relu(layer(t, f"towers.{i}", task, w))
        out[task] = layer(t, "heads", task, w)[:, 0]
    return out, p, q


def esmm_pairs(config):
    """[(ctr, cvr)] task indices of the ESMM pairs, in CVR task order."""
    names = [task["name"] for task in config["tasks"]]
    return [(names.index(task["head"]["ctr"]), t)
            for t, task in enumerate(config["tasks"])
            if task.get("head", {"kind": "own"})["kind"] == "esmm_cvr"]


def output_names(config):
    """The columns `predict` returns: the tasks, then `{ctr}_and_{cvr}` per pair."""
    names = [task["name"] for task in config["tasks"]]
    return names + [f"{names[c]}_and_{names[v]}" for c, v in esmm_pairs(config)]


def predictions(config, out):
    """What `predict` returns: the value, or the probability for classification;
    then pCTCVR = pCTR * pCVR of each ESMM pair."""
    values = [sigmoid(o) if task["kind"] == "binary_classification" else o
              for task, o in zip(config["tasks"], out)]
    values += [values[c] * values[v] for c, v in esmm_pairs(config)]
    return np.stack(values)


def softplus(x):
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def ctcvr_loss(a, b, y):
    """Per row: BCE of sigmoid(a) * sigmoid(b) against y, from the logits."""
    log_p = -softplus(-a) - softplus(-b)
    with np.errstate(divide="ignore"):
        log_q = np.where(log_p < -np.log(2.0), np.log1p(-np.exp(log_p)),
                         np.log(-np.expm1(log_p)))
    return -y * log_p - (1.0 - y) * log_q


def losses(config, out, targets, p=None, q=None):
    """([loss_t], [aux per gate]): the weighted task losses (what Trainer::loss
    returns) and the balancing losses (Trainer::balance_loss; empty when off)."""
    rows = out.shape[1]
    targets = np.asarray(targets, np.float64)
    ctr_of = {v: c for c, v in esmm_pairs(config)}
    task_losses = []
    for t, (task, o, y) in enumerate(zip(config["tasks"], out, targets)):
        if task["kind"] == "regression":
            per_row = (o - y) ** 2
        elif t in ctr_of:
            # ESMM CVR task: the CTCVR loss against click * conversion.
            c = ctr_of[t]
            per_row = ctcvr_loss(out[c], o, targets[c] * y)
        else:
            per_row = np.maximum(o, 0.0) - o * y + np.log1p(np.exp(-np.abs(o)))
        task_losses.append(task["weight"] * per_row.sum() / rows)
    arch = config["architecture"]
    if arch["kind"] in ("shared_bottom", "ple") or arch["gate"]["balance_weight"] == 0.0:
        return task_losses, []
    gate, w = arch["gate"], arch["gate"]["balance_weight"]
    seen, experts = seen_experts(config)
    aux = []
    for g in range(len(seen)):
        if gate["balance_loss"] == "importance":
            importance = p[g].sum(axis=0)                      # all E columns
            mean = importance.mean()
            var = ((importance - mean) ** 2).mean()            # population variance
            aux.append(0.0 if mean * mean == 0.0 else w * var / (mean * mean))
        else:
            k = gate["k"] if gate["kind"] == "top_k" else len(seen[g])
            f = (p[g] != 0.0).sum(axis=0) / (k * rows)
            z = q[g][:, seen[g]]
            full = np.exp(z - z.max(axis=1, keepdims=True))
            full /= full.sum(axis=1, keepdims=True)
            big_p = np.zeros(experts)
            big_p[seen[g]] = full.mean(axis=0)
            aux.append(w * len(seen[g]) * float((f * big_p).sum()))
    return task_losses, aux


def raw_value(meta, field, text):
    """A CSV cell of field `field` as the raw value its encoder looks up."""
    encoder = meta.get("vocabulary", {}).get(field)
    if encoder is None:
        return int(text)  # an ID
    if text.isdigit() and encoder["kind"] == "vocabulary" and text not in encoder["values"]:
        return int(text)
    return text


def field_rows(meta, header, lines):
    """Dense inputs [B, inputs] and per field its IDs, from CSV lines under a header."""
    config = meta["config"]
    cells = [line.split(",") for line in lines]
    column = {name: i for i, name in enumerate(header)}
    described = meta.get("dense_inputs", [])
    if described:
        dense = np.array([[(float(row[column[d["name"]]]) - d["mean"]) / d["std"]
                           for d in described] for row in cells])
    else:
        dense = np.array([[float(v) for v in row[:config["inputs"]]] for row in cells])
    fields = {}
    for field in config["fields"]:
        name = field["name"]
        single = field["values"]["kind"] == "single"
        items = [[row[column[name]]] if single else row[column[name]].split()
                 for row in cells]
        if field["weighted"]:  # each item `value:weight`
            weights = np.array([float(v.rpartition(":")[2]) for bag in items for v in bag])
            items = [[v.rpartition(":")[0] for v in bag] for bag in items]
        values = [[raw_value(meta, name, v) for v in bag] for bag in items]
        ids = np.array([encode(meta, name, v) if name in meta.get("vocabulary", {}) else v
                        for bag in values for v in bag], dtype=np.int64)
        offsets = np.cumsum([0] + [len(bag) for bag in values])
        given = ids if single else (offsets, ids)
        if field["weighted"]:
            given = (given, weights) if single else (offsets, ids, weights)
        fields[name] = given
    return dense.reshape(len(cells), config["inputs"]), fields


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    tensors, meta = load(argv[1])
    config = meta["config"]
    lines = [line for line in open(argv[2]).read().splitlines() if line.strip()]
    if config.get("fields"):
        dense, fields = field_rows(meta, lines[0].split(","), lines[1:])
        x = model_input(tensors, config, dense, fields)
    else:
        try:
            [float(v) for v in lines[0].split(",")]
        except ValueError:
            lines = lines[1:]  # a header
        x = np.array([[float(v) for v in line.split(",")] for line in lines])
    out, _, _ = forward(tensors, config, x)
    print(",".join(output_names(config)))
    for row in predictions(config, out).T:
        print(",".join(str(np.float32(v)) for v in row))


if __name__ == "__main__":
    main(sys.argv)
