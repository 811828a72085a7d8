{ pkgs }:
{
  pname = "producer";
  version = "1.0";

  params = {
    n = 10;
  };

  outputs = {
    data_csv = "$out/data.csv";
  };

  runDependencies = [ pkgs.coreutils ];

  run = { outputs, params, ... }: ''
    n="${toString params.n}"
    {
      echo "value"
      seq 1 "$n"
    } > "${outputs.data_csv}"
  '';
}
