# utils.dirs: one value per subdirectory of data/submissions (alice, bob, carol);
# utils.files: one value per file of data/configs (large.json, small.json).
# Paths are relative to this file. Cartesian product: 3 x 2 = 6 combinations.
{ pkgs, repx-lib, ... }:
{
  name = "grading";
  pipelines = [ ../pipelines/grade.nix ];
  params = {
    submission = repx-lib.utils.dirs ../data/submissions;
    config = repx-lib.utils.files ../data/configs;
  };
}
