#!/bin/sh
# Reproduces gateway/models/plate-crnn.onnx: 100 minutes on 2 CPU cores, no GPU.
#   apt-get install fonts-dejavu fonts-freefont-ttf fonts-roboto-unhinted fonts-crosextra-carlito \
#     fonts-croscore fonts-urw-base35 fonts-wqy-zenhei fonts-wqy-microhei fonts-droid-fallback \
#     fonts-arphic-uming fonts-arphic-gbsn00lp fonts-arphic-gkai00mp \
#     fonts-cantarell fonts-lato fonts-arphic-ukai fonts-lxgw-wenkai fonts-hanazono   # the last five are held out
#   pip install -r requirements.txt
set -eu
cd "$(dirname "$0")"
export OMP_NUM_THREADS=1
exec nice -n 10 python3 train.py "${1:-../../gateway/models/plate-crnn.onnx}" --minutes "${MINUTES:-100}" --seed 1
