# Writes data.csv: x,y for x = 1..points, y = seed * x. A slow run samples
# ten times as many points as a fast one.
{ pkgs }:
{
  pname = "simple-producer";

  parameters = {
    mode = "fast";
    seed = 1;
  };

  resources =
    { parameters }:
    {
      mem = if parameters.mode == "slow" then "1G" else "512M";
      cpus = 1;
    };

  outputs = {
    "data.csv" = "$out/data.csv";
  };

  runDependencies = [ pkgs.coreutils ];

  run =
    { outputs, parameters, ... }:
    ''
      if [ "${parameters.mode}" = slow ]; then
        points=100
      else
        points=10
      fi
      seed="${parameters.seed}"
      {
        echo "x,y"
        for x in $(seq 1 "$points"); do
          echo "$x,$((seed * x))"
        done
      } > "${outputs."data.csv"}"
    '';
}
