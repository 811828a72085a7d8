_: {
  name = "simulation-run";
  pipelines = [
    ./pipe-sim.nix
  ];
  parameters = {
    mode = [
      "fast"
      "slow"
    ];
    seed = [
      1
      2
    ];
  };
}
