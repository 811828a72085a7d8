# "chunks" is declared by both scatter-gather stages; a plain key targets every
# stage that declares it.
{ pkgs, repx-lib, ... }:
{
  name = "chunked-sum";
  pipelines = [ ../pipelines/main.nix ];
  params = {
    chunks = [ 10 ];
  };
}
