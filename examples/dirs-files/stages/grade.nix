# Grades one submission under one config:
#   score = max(0, max_score - penalty * |answer - expected|)
# The submission's name is its directory name (a store hash prefix, if the
# directory was copied into the store under its own name, is removed).
{ pkgs }:
{
  pname = "grade";
  version = "1.0";

  params = {
    submission = "";
    config = "";
  };

  inputs = {
    status = "";
  };

  outputs = {
    grade = "$out/grade.json";
  };

  runDependencies = [ pkgs.coreutils pkgs.gnused pkgs.jq ];

  run = { inputs, outputs, params, ... }: ''
    submission="${params.submission}"
    config="${params.config}"
    name=$(basename "$submission" | sed -E 's/^[0-9a-df-np-sv-z]{32}-//')
    read -r status < "${inputs.status}"
    if [ "$status" = "ok" ]; then
      answer=$(tr -d '[:space:]' < "$submission/answer.txt")
    else
      answer=null
    fi
    jq --arg student "$name" --argjson answer "$answer" '{
      student: $student,
      config: .name,
      answer: $answer,
      score: (if $answer == null then 0
              else (($answer - .expected) as $d
                    | (if $d < 0 then -$d else $d end) as $off
                    | [0, .max_score - .penalty * $off] | max)
              end)
    }' "$config" > "${outputs.grade}"
  '';
}
