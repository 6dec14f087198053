"""Registered building blocks. Importing this package registers every module with ``models.registry``."""
from models.modules import conv, csp, gsconv, heads, yolov7  # noqa: F401  (imported for registration)
from models.modules.conv import Concat, Conv, DWConv, Focus
from models.modules.csp import C3, SPP, SPPF, Bottleneck
from models.modules.gsconv import GSBottleneck, GSBottleneckC, GSConv, GSConvns, VoVGSCSP, VoVGSCSPC
from models.modules.heads import Detect, IDetect
from models.modules.yolov7 import MP, SP, SPPCSPC, RepConv

__all__ = ["Bottleneck", "C3", "Concat", "Conv", "DWConv", "Detect", "Focus", "GSBottleneck", "GSBottleneckC",
           "GSConv", "GSConvns", "IDetect", "MP", "RepConv", "SP", "SPP", "SPPCSPC", "SPPF", "VoVGSCSP", "VoVGSCSPC"]
