# A 10 GiB block volume made through the plugin:
#   nomad volume create deploy/nomad/volume.hcl
id        = "pgdata"
name      = "pgdata"
type      = "csi"
plugin_id = "stowage"

capacity_min = "10GiB"

capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}

parameters {
  driver = "block"
  fs     = "xfs"
}
