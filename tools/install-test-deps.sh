#!/usr/bin/env bash
# What the tests need beyond Python packages: Debian's Prometheus, Pushgateway, promtool and Fashion-MNIST,
# and a separate virtualenv for the moto S3 server (botocore pins python-dateutil<3, the kubernetes client >=3).
# moto 5.2.1 breaks pyarrow multipart uploads (getmoto/moto#10055); 5.2.5 works.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ! -x .venv-s3/bin/moto_server ]; then
  echo "creating .venv-s3 with moto[server] for the loopback S3 endpoint"
  python3 -m venv .venv-s3
  .venv-s3/bin/pip install --quiet "moto[server]==5.2.5"
fi
