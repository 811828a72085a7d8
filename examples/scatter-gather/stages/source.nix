# The numbers 1..count, one per line.
{ pkgs }:
{
  pname = "source";
  version = "1.0";

  params = {
    count = 10;
  };

  outputs = {
    data = "$out/numbers.txt";
  };

  runDependencies = [ pkgs.coreutils ];

  run = { outputs, params, ... }: ''
    seq 1 "${toString params.count}" > "${outputs.data}"
  '';
}
