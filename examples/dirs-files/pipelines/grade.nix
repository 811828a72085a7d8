# check (declares submission: 3 jobs) -> grade (submission x config: 6 jobs).
{ repx, pkgs, ... }:
repx.mkPipe rec {
  check = repx.callStage ../stages/check-submission.nix [ ];
  grade = repx.callStage ../stages/grade.nix [ check ];
}
