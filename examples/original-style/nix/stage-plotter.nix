# The analysis: one row per simulation (mode, seed, points, sum), read through
# repx_py from the simulation run's metadata, as the original's analysis stages
# do. The interpreter asks for repx_py alone (ps.repx-py: repx's repx_py and
# repx.analysis, which need only the standard library), so the package set
# provides it with any python3, and nothing has to be installed for it.
{ pkgs }:
{
  pname = "simple-plotter";

  inputs = {
    "store__base" = "";
    "metadata__simulation-run" = "";
  };

  outputs = {
    "analysis.csv" = "$out/analysis.csv";
  };

  runDependencies = [
    (pkgs.python3.withPackages (ps: [ ps.repx-py ]))
  ];

  run =
    { inputs, outputs, ... }:
    let
      script = pkgs.writeText "analyze.py" ''
        import argparse
        import csv

        from repx_py import Experiment

        parser = argparse.ArgumentParser()
        parser.add_argument("--meta", required=True)
        parser.add_argument("--store", required=True)
        parser.add_argument("--out", required=True)
        args = parser.parse_args()

        print(f"Loading experiment from {args.meta}")
        exp = Experiment.from_run_metadata(args.meta, args.store)

        rows = []
        for summer in exp.jobs().filter(name__contains="simple-summer"):
            # The summer declares no parameters: mode and seed are its producer's.
            params = summer.effective_params
            producer = exp.jobs().filter(
                name__contains="simple-producer",
                param_mode=params["mode"],
                param_seed=params["seed"],
            )[0]
            with open(producer.get_output_path("data.csv")) as f:
                points = sum(1 for _ in csv.DictReader(f))
            with open(summer.get_output_path("result.sum")) as f:
                total = int(f.read().strip())
            rows.append((params["mode"], params["seed"], points, total))

        with open(args.out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["mode", "seed", "points", "sum"])
            writer.writerows(sorted(rows))
        print(f"Saved {len(rows)} rows to {args.out}")
      '';
    in
    ''
      python3 ${script} \
        --meta "${inputs."metadata__simulation-run"}" \
        --store "${inputs."store__base"}" \
        --out "${outputs."analysis.csv"}"
    '';
}
