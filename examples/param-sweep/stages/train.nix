# The seeds' "train-model" stage. It fits y = w x + b on the data set with a few
# epochs of mini-batch gradient descent (plain "sgd" or "adam") and writes the
# resulting metrics. Everything is deterministic: same params, same metrics.json.
{ pkgs }:
{
  pname = "train-model";
  version = "1.0";

  params = {
    learning_rate = 0.01;
    batch_size = 32;
    optimizer = "adam";
  };

  inputs = {
    dataset = "";
  };

  outputs = {
    metrics = "$out/metrics.json";
    model = "$out/model.txt";
  };

  runDependencies = [ pkgs.python3 ];

  run = { inputs, outputs, params, ... }: ''
    python3 - \
      "${inputs.dataset}" \
      "${outputs.metrics}" \
      "${outputs.model}" \
      "${toString params.learning_rate}" \
      "${toString params.batch_size}" \
      "${params.optimizer}" <<'PY'
    import json
    import math
    import sys

    dataset, metrics_path, model_path, lr, batch, optimizer = sys.argv[1:]
    lr = float(lr)
    batch = int(batch)
    if optimizer not in ("adam", "sgd"):
        sys.exit("unknown optimizer: " + optimizer)

    rows = []
    with open(dataset) as f:
        next(f)
        for line in f:
            x, y = line.strip().split(",")
            rows.append((float(x), float(y)))
    n = len(rows)
    # Scale both axes to [0, 1] so that every learning rate stays stable.
    xs = [x / n for x, _ in rows]
    ys = [y / n for _, y in rows]

    params = [0.0, 0.0]
    m = [0.0, 0.0]
    v = [0.0, 0.0]
    step = 0
    epochs = 20
    for _ in range(epochs):
        for start in range(0, n, batch):
            bx = xs[start:start + batch]
            by = ys[start:start + batch]
            gw = gb = 0.0
            for x, y in zip(bx, by):
                err = params[0] * x + params[1] - y
                gw += 2 * err * x / len(bx)
                gb += 2 * err / len(bx)
            step += 1
            for i, g in enumerate((gw, gb)):
                if optimizer == "sgd":
                    params[i] -= lr * g
                else:
                    m[i] = 0.9 * m[i] + 0.1 * g
                    v[i] = 0.999 * v[i] + 0.001 * g * g
                    mh = m[i] / (1 - 0.9 ** step)
                    vh = v[i] / (1 - 0.999 ** step)
                    params[i] -= lr * mh / (math.sqrt(vh) + 1e-8)

    mse = sum((params[0] * x + params[1] - y) ** 2 for x, y in zip(xs, ys)) / n
    metrics = {
        "learning_rate": lr,
        "batch_size": batch,
        "optimizer": optimizer,
        "epochs": epochs,
        "steps": step,
        "final_loss": round(mse, 6),
        "weight": round(params[0], 6),
        "bias": round(params[1], 6),
    }
    with open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(model_path, "w") as f:
        f.write("w=%.6f b=%.6f\n" % (params[0], params[1]))
    PY
  '';
}
