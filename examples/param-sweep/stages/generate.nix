# A small synthetic regression data set: y = 0.5 x + noise, x = 1..samples.
# The noise comes from a tiny linear congruential generator, so the file is
# byte-for-byte the same on every run.
{ pkgs }:
{
  pname = "generate";
  version = "1.0";

  params = {
    samples = 100;
    seed = 42;
  };

  outputs = {
    dataset = "$out/dataset.csv";
  };

  runDependencies = [ pkgs.gawk ];

  run = { outputs, params, ... }: ''
    awk -v n="${toString params.samples}" -v seed="${toString params.seed}" 'BEGIN {
      print "x,y"
      state = seed
      for (i = 1; i <= n; i++) {
        state = (state * 75 + 74) % 65537
        noise = (state % 1000) / 1000 - 0.5
        printf "%d,%.4f\n", i, 0.5 * i + noise
      }
    }' > "${outputs.dataset}"
  '';
}
