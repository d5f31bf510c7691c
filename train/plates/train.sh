#!/bin/sh
# Reproduces the gateway's two models, about 115 minutes on 2 CPU cores, no GPU:
#   gateway/models/plate-crnn.onnx      the recogniser, 100 minutes (train.py)
#   gateway/models/plate-province.onnx  the province classifier, about 15 minutes (province.py)
#   apt-get install fonts-dejavu fonts-freefont-ttf fonts-roboto-unhinted fonts-crosextra-carlito \
#     fonts-croscore fonts-urw-base35 fonts-wqy-zenhei fonts-wqy-microhei fonts-droid-fallback \
#     fonts-arphic-uming fonts-arphic-gbsn00lp fonts-arphic-gkai00mp \
#     fonts-smiley-sans fonts-babelstone-han fonts-ipafont-gothic fonts-ipafont-mincho \
#     fonts-vlgothic fonts-arphic-bsmi00lp fonts-arphic-bkai00mp fonts-unfonts-core \
#     fonts-cantarell fonts-lato fonts-arphic-ukai fonts-lxgw-wenkai fonts-hanazono   # the last five are held out
#   pip install -r requirements.txt
# `train.sh crnn` or `train.sh province` trains only that one.
set -eu
cd "$(dirname "$0")"
export OMP_NUM_THREADS=1
what=${1:-both}
case $what in
  both | crnn | province) ;;
  *) echo "usage: train.sh [both|crnn|province]" >&2; exit 2 ;;
esac
if [ "$what" = both ] || [ "$what" = crnn ]; then
  nice -n 10 python3 train.py ../../gateway/models/plate-crnn.onnx --minutes "${MINUTES:-100}" --seed 1
fi
if [ "$what" = both ] || [ "$what" = province ]; then
  OMP_NUM_THREADS=2 nice -n 10 python3 province.py ../../gateway/models/plate-province.onnx --samples 80000 --minutes 8 --seed 1
fi
