# Five pseudo-random samples in 0..999 from a tiny linear congruential
# generator seeded with "seed" (deterministic).
{ pkgs }:
{
  pname = "simulate";
  version = "1.0";

  params = {
    seed = 1;
    n_samples = 5;
  };

  outputs = {
    samples = "$out/samples.json";
  };

  runDependencies = [ pkgs.coreutils pkgs.jq ];

  run = { outputs, params, ... }: ''
    seed="${toString params.seed}"
    count="${toString params.n_samples}"
    state=$seed
    for _ in $(seq 1 "$count"); do
      state=$(((state * 75 + 74) % 65537))
      echo $((state % 1000))
    done | jq -s --argjson seed "$seed" '{seed: $seed, values: .}' \
      > "${outputs.samples}"
  '';
}
