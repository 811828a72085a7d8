# Stage 1: n pseudo-random numbers in [0, 1) from a generator seeded with `seed`.
# `params` are the defaults; the run overrides them. The same params always give
# the same file, so a job's result depends only on what its id covers.
{ pkgs }:
{
  pname = "generate";
  version = "1.0";

  params = {
    n = 100;
    seed = 1;
  };

  outputs = {
    samples = "$out/samples.csv";
  };

  # The commands the script calls; repx checks the script against this list.
  runDependencies = [ pkgs.gawk ];

  run = { outputs, params, ... }: ''
    awk -v n="${toString params.n}" -v seed="${toString params.seed}" 'BEGIN {
      print "i,value"
      state = seed
      for (i = 1; i <= n; i++) {
        state = (state * 75 + 74) % 65537
        printf "%d,%.6f\n", i, state / 65537
      }
    }' > "${outputs.samples}"
  '';
}
