# Checks that a submission directory holds a numeric answer.txt.
# It declares only "submission", so it runs once per submission (3 jobs),
# whatever the config.
{ pkgs }:
{
  pname = "check-submission";
  version = "1.0";

  params = {
    submission = "";
  };

  outputs = {
    status = "$out/status.txt";
  };

  runDependencies = [ pkgs.coreutils pkgs.gnugrep ];

  run = { outputs, params, ... }: ''
    answer_file="${params.submission}/answer.txt"
    if [ ! -f "$answer_file" ]; then
      echo "missing answer.txt in ${params.submission}" >&2
      exit 1
    fi
    if grep -Eq '^[[:space:]]*-?[0-9]+[[:space:]]*$' "$answer_file"; then
      echo "ok" > "${outputs.status}"
    else
      echo "not a number" > "${outputs.status}"
    fi
  '';
}
