"""The typefaces of the training renderer, split once and for all into training and held-out.

Held-out faces are only ever used to draw evaluation scenes; the simulator's own faces (Liberation
Sans, Noto Sans, Noto Sans/Serif CJK) and their close relatives (Arimo is Liberation Sans; Open
Sans and Droid Sans are Noto Sans's ancestors) are used for neither, because the simulator's camera
is an evaluation set of its own.

All faces come from Debian font packages (`apt-get install` the packages named below).
"""

D = "/usr/share/fonts"

# (name, path, face index in a collection, Debian package, licence)
LATIN_TRAIN = [
    ("DejaVu Sans Bold", f"{D}/truetype/dejavu/DejaVuSans-Bold.ttf", 0, "fonts-dejavu-core", "Bitstream Vera / public domain"),
    ("DejaVu Sans Condensed Bold", f"{D}/truetype/dejavu/DejaVuSansCondensed-Bold.ttf", 0, "fonts-dejavu-extra", "Bitstream Vera / public domain"),
    ("DejaVu Sans Mono Bold", f"{D}/truetype/dejavu/DejaVuSansMono-Bold.ttf", 0, "fonts-dejavu-core", "Bitstream Vera / public domain"),
    ("FreeSans Bold", f"{D}/truetype/freefont/FreeSansBold.ttf", 0, "fonts-freefont-ttf", "GPL-3+ with font exception"),
    ("FreeMono Bold", f"{D}/truetype/freefont/FreeMonoBold.ttf", 0, "fonts-freefont-ttf", "GPL-3+ with font exception"),
    ("Roboto Bold", f"{D}/truetype/roboto/unhinted/RobotoTTF/Roboto-Bold.ttf", 0, "fonts-roboto-unhinted", "Apache-2.0"),
    ("Roboto Black", f"{D}/truetype/roboto/unhinted/RobotoTTF/Roboto-Black.ttf", 0, "fonts-roboto-unhinted", "Apache-2.0"),
    ("Roboto Condensed Bold", f"{D}/truetype/roboto/unhinted/RobotoCondensed-Bold.ttf", 0, "fonts-roboto-unhinted", "Apache-2.0"),
    ("Carlito Bold", f"{D}/truetype/crosextra/Carlito-Bold.ttf", 0, "fonts-crosextra-carlito", "OFL-1.1"),
    ("Cousine Bold", f"{D}/truetype/croscore/Cousine-Bold.ttf", 0, "fonts-croscore", "Apache-2.0"),
    ("Nimbus Sans Bold", f"{D}/opentype/urw-base35/NimbusSans-Bold.otf", 0, "fonts-urw-base35", "AGPL-3 with font exception"),
    ("Nimbus Sans Narrow Bold", f"{D}/opentype/urw-base35/NimbusSansNarrow-Bold.otf", 0, "fonts-urw-base35", "AGPL-3 with font exception"),
    ("Nimbus Mono PS Bold", f"{D}/opentype/urw-base35/NimbusMonoPS-Bold.otf", 0, "fonts-urw-base35", "AGPL-3 with font exception"),
]

CJK_TRAIN = [
    ("WenQuanYi Zen Hei", f"{D}/truetype/wqy/wqy-zenhei.ttc", 0, "fonts-wqy-zenhei", "GPL-2 with font exception"),
    ("WenQuanYi Micro Hei", f"{D}/truetype/wqy/wqy-microhei.ttc", 0, "fonts-wqy-microhei", "Apache-2.0 or GPL-3 with font exception"),
    ("Droid Sans Fallback", f"{D}/truetype/droid/DroidSansFallbackFull.ttf", 0, "fonts-droid-fallback", "Apache-2.0"),
    ("AR PL UMing CN", f"{D}/truetype/arphic/uming.ttc", 0, "fonts-arphic-uming", "Arphic Public License"),
    ("AR PL SungtiL GB", f"{D}/truetype/arphic-gbsn00lp/gbsn00lp.ttf", 0, "fonts-arphic-gbsn00lp", "Arphic Public License"),
    ("AR PL KaitiM GB", f"{D}/truetype/arphic-gkai00mp/gkai00mp.ttf", 0, "fonts-arphic-gkai00mp", "Arphic Public License"),
]

# Drawn only into the province classifier's samples (`province.py`), for more shapes of the few
# characters it reads. Some lack a few provinces (the Japanese and Korean faces, the traditional
# Big5 ones); each character is drawn from a face that has it.
CJK_PROVINCE_EXTRA = [
    ("Smiley Sans Oblique", f"{D}/truetype/smiley-sans/SmileySans-Oblique.ttf", 0, "fonts-smiley-sans", "OFL-1.1"),
    ("BabelStone Han", f"{D}/truetype/babelstone/BabelStoneHan.ttf", 0, "fonts-babelstone-han", "Arphic Public License"),
    ("WenQuanYi Zen Hei Sharp", f"{D}/truetype/wqy/wqy-zenhei.ttc", 1, "fonts-wqy-zenhei", "GPL-2 with font exception"),
    ("IPAGothic", f"{D}/opentype/ipafont-gothic/ipag.ttf", 0, "fonts-ipafont-gothic", "IPA Font License"),
    ("IPAMincho", f"{D}/opentype/ipafont-mincho/ipam.ttf", 0, "fonts-ipafont-mincho", "IPA Font License"),
    ("VL Gothic", f"{D}/truetype/vlgothic/VL-Gothic-Regular.ttf", 0, "fonts-vlgothic", "BSD-3-Clause / M+ FONT LICENSE"),
    ("AR PL Mingti2L Big5", f"{D}/truetype/arphic-bsmi00lp/bsmi00lp.ttf", 0, "fonts-arphic-bsmi00lp", "Arphic Public License"),
    ("AR PL KaitiM Big5", f"{D}/truetype/arphic-bkai00mp/bkai00mp.ttf", 0, "fonts-arphic-bkai00mp", "Arphic Public License"),
    ("UnBatang Bold", f"{D}/truetype/unfonts-core/UnBatangBold.ttf", 0, "fonts-unfonts-core", "GPL-2"),
    ("UnDotum Bold", f"{D}/truetype/unfonts-core/UnDotumBold.ttf", 0, "fonts-unfonts-core", "GPL-2"),
]

# Never drawn into a training sample.
LATIN_HELDOUT = [
    ("Cantarell Bold", f"{D}/opentype/cantarell/Cantarell-Bold.otf", 0, "fonts-cantarell", "OFL-1.1"),
    ("Lato Heavy", f"{D}/truetype/lato/Lato-Heavy.ttf", 0, "fonts-lato", "OFL-1.1"),
    ("URW Gothic Demi", f"{D}/opentype/urw-base35/URWGothic-Demi.otf", 0, "fonts-urw-base35", "AGPL-3 with font exception"),
]

CJK_HELDOUT = [
    ("AR PL UKai CN", f"{D}/truetype/arphic/ukai.ttc", 0, "fonts-arphic-ukai", "Arphic Public License"),
    ("LXGW WenKai Bold", f"{D}/truetype/lxgw-wenkai/LXGWWenKai-Bold.ttf", 0, "fonts-lxgw-wenkai", "OFL-1.1"),
    ("HanaMinA", f"{D}/truetype/hanazono/HanaMinA.ttf", 0, "fonts-hanazono", "OFL-1.1 / Hanazono Font License"),
]
