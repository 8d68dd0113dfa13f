# Non-interactive `apt-get`, keeping changed config files. Parameters: the apt-get
# command and its arguments ("$@"). A failed `install` is retried once (a transient
# dpkg failure); other commands run once.
export DEBIAN_FRONTEND=noninteractive
apt_get() {
  apt-get -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}
if [ "$1" = install ]; then
  apt_get "$@" || {
    echo 'image-builder: apt-get install failed; retrying once' >&2
    sleep 5
    apt_get "$@"
  }
else
  apt_get "$@"
fi
