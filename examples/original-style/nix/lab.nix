# A lab written the way the original RepX's examples are (its examples/simple),
# built and run by repx unchanged: `parameters` instead of `params`, pipeline
# files taking `{ repx }`, run files `_: { ... }`, quoted attribute names with
# dots, a run script branching on `[ "${parameters.mode}" = slow ]`, and an
# analysis run whose first stage reads the simulation run's `metadata__<run>`
# through repx_py in a `python3.withPackages` interpreter.
{
  pkgs,
  repx-lib,
  gitHash,
}:

repx-lib.mkLab {
  inherit pkgs gitHash repx-lib;
  lab_version = "1.0.0";
  runs = rec {
    simulation = repx-lib.callRun ./run-simulation.nix [ ];

    analysis = repx-lib.callRun ./run-analysis.nix [
      [
        simulation
        "soft"
      ]
    ];
  };
}
