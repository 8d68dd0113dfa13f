# Bake a local golden qcow2 with Packer's QEMU builder and the `vmagent` provisioner:
# the same provisioning steps as `image-builder bake --backend qemu` (provision:
# wait for cloud-init, apt lock drop-in + apt-idle wait, sudoers drop-in checked with
# `visudo -cf`, vm-agent upload + sha256 check + install + enable, extra commands, seal)
# on the same base (`image-builder base build`: base.raw, a whole disk that boots by
# its own GRUB), so both produce a golden disk that boots by itself.
# bench/local-bake.sh runs it side by side with `image-builder bake`.
#
#   B=~/.cache/image-builder/base/bookworm-<key>
#   packer build \
#     -var base_disk=$B/base.raw \
#     -var seed_dir=./seed -var ssh_private_key_file=./id_ed25519 \
#     -var agent_path=./vm-agent -var agent_config=./vm-agent.toml \
#     -var output_dir=./out qemu-bake.pkr.hcl
#
# seed_dir: templates/packer/qemu/{meta-data,vendor-data} plus `user-data` made from
# templates/packer/qemu/user-data.in with the build user and the generated public key
# (whose comment is var.generated_key_comment) filled in. vendor-data is served empty on
# purpose: without it cloud-init's nocloud-net retries the 404 ten times (~11 s).
#
# Plugin (Packer 1.6.6): `packer-provisioner-vmagent` (packer-plugin/) in
# PACKER_PLUGIN_PATH or next to this file; see packer-plugin/README.md.
#
# Packer 1.6.6 QEMU notes (shared/reference/local-vm-notes.md):
# - `accelerator = "tcg"`; never `-accel` in qemuargs ("-accel and -machine accel= are
#   incompatible"). TCG because /dev/kvm here is a nested hypervisor that crashes
#   stock kernels.
# - `boot_wait = "0s"` silently becomes 10 s; "-1s" means no wait (nothing is typed).
# - qemuargs replace whole keys: any `-device` would drop Packer's device list, so no
#   `-device` here (Packer's own virtio NIC with the SSH hostfwd stays).

variable "base_disk" {
  type        = string
  description = "The raw base disk (base.raw of `image-builder base build`); copied, never modified."
}

variable "seed_dir" {
  type        = string
  description = "NoCloud seed served over Packer's HTTP server: meta-data, user-data, vendor-data."
}

variable "ssh_private_key_file" {
  type        = string
  description = "Private key whose public half is in the seed's user-data (generated per bake)."
}

variable "generated_key_comment" {
  type        = string
  default     = "packer-bake-generated"
  description = "Comment of the generated public key; its line is removed from authorized_keys before power-off."
}

variable "build_user" {
  type    = string
  default = "builder"
}

variable "agent_path" {
  type        = string
  description = "The static vm-agent binary (vm-agent/build-static.sh)."
}

variable "agent_config" {
  type        = string
  description = "vm-agent's config.toml baked into the image (no secrets)."
}

variable "commands" {
  type        = list(string)
  default     = []
  description = "Extra steps, each run with `sh -eu` as root before the seal."
}

variable "output_dir" {
  type    = string
  default = "output-qemu-bake"
}

variable "vm_name" {
  type    = string
  default = "golden.qcow2"
}

variable "console_log" {
  type        = string
  default     = "/dev/null"
  description = "Where the guest's serial console goes."
}

variable "memory" {
  type    = number
  default = 2048
}

variable "cpus" {
  type    = number
  default = 2
}

source "qemu" "bake" {
  # The base disk as a "disk image": Packer converts it (raw -> qcow2) into
  # output_dir and boots that copy.
  iso_url          = var.base_disk
  iso_checksum     = "none"
  disk_image       = true
  use_backing_file = false
  skip_resize_disk = true
  format           = "qcow2"
  disk_interface   = "virtio"
  net_device       = "virtio-net"
  # Flattened and compressed output, like `image-builder bake` (qemu-img convert -c).
  skip_compaction  = false
  disk_compression = true
  output_directory = var.output_dir
  vm_name          = var.vm_name

  accelerator = "tcg"
  memory      = var.memory
  cpus        = var.cpus
  headless    = true
  # Accepted by 1.6.6, which still passes `-vnc 127.0.0.1:N`; newer Packers honour it.
  disable_vnc = true

  # base.raw boots by its own GRUB (QEMU's default firmware). The NoCloud seed comes
  # over HTTP (cloud-init's nocloud-net reads the DMI serial); 10.0.2.2 is the host as
  # seen from QEMU user networking.
  qemuargs = [
    ["-smbios", "type=1,serial=ds=nocloud-net;s=http://{{ .HTTPIP }}:{{ .HTTPPort }}/"],
    ["-cpu", "max"],
    ["-nodefaults"],
    ["-serial", "file:${var.console_log}"],
  ]
  boot_wait = "-1s"

  http_directory    = var.seed_dir
  http_port_min     = 42100
  http_port_max     = 42199
  host_port_min     = 42200
  host_port_max     = 42299

  communicator         = "ssh"
  ssh_username         = var.build_user
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = "10m"

  # The seal (last provisioning step) already ran. Drop what only Packer needed: the
  # cloud-init NOPASSWD drop-in (the sudoers step installed the build user's own,
  # checked one) and the generated key; then power off.
  shutdown_command = "sudo -n sh -c 'rm -f /etc/sudoers.d/90-cloud-init-users; sed -i \"/ ${var.generated_key_comment}$/d\" /home/${var.build_user}/.ssh/authorized_keys; systemctl poweroff'"
  shutdown_timeout = "5m"
}

build {
  sources = ["source.qemu.bake"]

  provisioner "vmagent" {
    wait_for_cloud_init = true
    cloud_init_timeout  = "15m"
    apt_lock_fix        = true
    apt_lock_timeout    = "10m"
    wait_apt_idle       = true
    build_user          = var.build_user
    agent_path          = var.agent_path
    agent_config        = var.agent_config
    commands            = var.commands
    environment         = { DEBIAN_FRONTEND = "noninteractive" }
    seal                = true
    step_timeout        = "30m"
  }
}
