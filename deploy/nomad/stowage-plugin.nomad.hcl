# Stowage as a Nomad CSI plugin on every client: one monolith task serves
# the controller and node services on the socket Nomad hands it.
job "stowage-csi" {
  type = "system"

  group "stowage" {
    task "plugin" {
      driver = "docker"

      config {
        image      = "stowage:0.1.0"
        privileged = true
        args = [
          "serve",
          "--csi-endpoint=unix:///csi/csi.sock",
          "--node-id=${node.unique.name}",
          "--plugin-dir=/run/stowage/docker-plugins",
        ]
        mount {
          type     = "bind"
          source   = "/var/lib/stowage"
          target   = "/var/lib/stowage"
          readonly = false
        }
        mount {
          type     = "bind"
          source   = "/dev"
          target   = "/dev"
          readonly = false
        }
      }

      csi_plugin {
        id        = "stowage"
        type      = "monolith"
        mount_dir = "/csi"
      }

      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
