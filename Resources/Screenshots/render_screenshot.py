"""Render the extension's screenshot: a real result on the bundled sample CT, drawn with VTK.

Not a picture of Slicer's window: the bone surface and a sagittal slice of
``Testing/Data/ts_example_ct.nii.gz``, with the points that ``vertebrae-labeling`` placed on it, coloured
by spine region as the Slicer module colours its point lists. Made with (the second command needs
vtk and SimpleITK, e.g. the slicer-core environment of ``.ci/run``):

    vertebrae-labeling Testing/Data/ts_example_ct.nii.gz -o /tmp/sample.mrk.json
    .venv-slicer/bin/python Resources/Screenshots/render_screenshot.py /tmp/sample.mrk.json \\
        Resources/Screenshots/VertebraeLabeling1.png
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "VertebraeLabeling"))
from VertebraeLabelingLib.vertebrae import REGION_COLORS, region_of  # noqa: E402

WIDTH, HEIGHT = 960, 600


def read_points(path):
    """[(label, LPS position)] of a Slicer markups file written in LPS."""
    markup = json.loads(Path(path).read_text())["markups"][0]
    assert markup.get("coordinateSystem", "LPS") == "LPS"
    return [(p["label"], np.array(p["position"], float)) for p in markup["controlPoints"]]


def lps_volume(ct_path):
    """The CT resampled to no voxel (only reordered) with LPS axes: (array z,y,x; origin; spacing)."""
    image = sitk.DICOMOrient(sitk.ReadImage(str(ct_path)), "LPS")
    return sitk.GetArrayFromImage(image).astype(np.float32), np.array(image.GetOrigin()), np.array(image.GetSpacing())


def image_data(array_zyx, origin, spacing):
    data = vtk.vtkImageData()
    data.SetDimensions(array_zyx.shape[2], array_zyx.shape[1], array_zyx.shape[0])
    data.SetOrigin(*origin)
    data.SetSpacing(*spacing)
    data.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array_zyx.ravel(), deep=True))
    return data


def add_points(renderer, points, radius, label_offset, z_lift=0.0):
    for label, pos in points:
        color = REGION_COLORS.get(region_of(label), (1.0, 1.0, 1.0))
        sphere = vtk.vtkSphereSource()
        sphere.SetCenter(*(pos + [0.0, 0.0, 0.0]))
        sphere.SetRadius(radius)
        sphere.SetThetaResolution(24)
        sphere.SetPhiResolution(24)
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(sphere.GetOutputPort())
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*color)
        renderer.AddActor(actor)
        text = vtk.vtkBillboardTextActor3D()
        text.SetInput(label)
        text.SetPosition(*(pos + label_offset))
        text.GetTextProperty().SetFontSize(18)
        text.GetTextProperty().SetBold(True)
        text.GetTextProperty().SetColor(*color)
        text.GetTextProperty().SetVerticalJustificationToCentered()
        renderer.AddActor(text)


def bone_view(renderer, volume, origin, spacing, points):
    """Bone surface (200 HU) from 30 mm below the lowest point upwards, seen from the patient's left front."""
    k0 = max(0, int((min(p[2] for _, p in points) - 30.0 - origin[2]) / spacing[2]))
    smooth = vtk.vtkImageGaussianSmooth()
    smooth.SetInputData(image_data(volume[k0:], origin + [0.0, 0.0, k0 * spacing[2]], spacing))
    smooth.SetStandardDeviations(1.2, 1.2, 1.2)
    surface = vtk.vtkFlyingEdges3D()
    surface.SetInputConnection(smooth.GetOutputPort())
    surface.SetValue(0, 200.0)
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputConnection(surface.GetOutputPort())
    mapper.ScalarVisibilityOff()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(0.93, 0.90, 0.82)
    actor.GetProperty().SetOpacity(0.6)
    renderer.AddActor(actor)
    add_points(renderer, points, radius=6.0, label_offset=np.array([0.0, -45.0, 0.0]))  # in front of the spine
    centre = np.mean([p for _, p in points], axis=0)
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(*centre)
    camera.SetPosition(*(centre + np.array([500.0, -300.0, 40.0])))  # from the patient's left, a little in front
    camera.SetViewUp(0.0, 0.0, 1.0)
    renderer.ResetCamera()
    camera.Dolly(1.25)
    renderer.ResetCameraClippingRange()


def sagittal_view(renderer, volume, origin, spacing, points):
    """The sagittal slice at the points' median left-right position (anterior on the left), with every
    point drawn on it whatever its own left-right position."""
    x_mid = np.median([p[0] for _, p in points])
    slab = volume[:, :, int(round((x_mid - origin[0]) / spacing[0]))]  # (z, y)
    level, window = 250.0, 1200.0
    grey = np.clip((slab - (level - window / 2)) / window * 255.0, 0, 255).astype(np.uint8)
    data = vtk.vtkImageData()
    data.SetDimensions(grey.shape[1], grey.shape[0], 1)  # u = LPS y (anterior -> posterior), v = z
    data.SetOrigin(origin[1], origin[2], 0.0)
    data.SetSpacing(spacing[1], spacing[2], 1.0)
    data.GetPointData().SetScalars(numpy_support.numpy_to_vtk(grey.ravel(), deep=True))
    image = vtk.vtkImageActor()
    image.GetMapper().SetInputData(data)
    renderer.AddActor(image)
    flat = [(label, np.array([p[1], p[2], 2.0])) for label, p in points]
    add_points(renderer, flat, radius=4.5, label_offset=np.array([-30.0, 0.0, 0.0]))
    for text, u in (("A", origin[1] + 6), ("P", origin[1] + spacing[1] * (grey.shape[1] - 1) - 14)):
        marker = vtk.vtkBillboardTextActor3D()
        marker.SetInput(text)
        marker.SetPosition(u, origin[2] + spacing[2] * (grey.shape[0] - 1) - 10, 2.0)
        marker.GetTextProperty().SetFontSize(16)
        renderer.AddActor(marker)
    camera = renderer.GetActiveCamera()
    camera.ParallelProjectionOn()
    renderer.ResetCamera()
    camera.SetParallelScale(spacing[2] * grey.shape[0] / 2 * 1.02)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("markups", help="the .mrk.json that vertebrae-labeling wrote for the sample CT")
    parser.add_argument("png", help="picture to write")
    parser.add_argument("--ct", default=str(ROOT / "Testing" / "Data" / "ts_example_ct.nii.gz"))
    args = parser.parse_args(argv)
    points = read_points(args.markups)
    volume, origin, spacing = lps_volume(args.ct)

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(WIDTH, HEIGHT)
    left, right = vtk.vtkRenderer(), vtk.vtkRenderer()
    left.SetViewport(0.0, 0.0, 0.58, 0.93)
    right.SetViewport(0.58, 0.0, 1.0, 0.93)
    title = vtk.vtkRenderer()
    title.SetViewport(0.0, 0.93, 1.0, 1.0)
    for r in (left, right, title):
        r.SetBackground(0.11, 0.12, 0.16)
        window.AddRenderer(r)
    bone_view(left, volume, origin, spacing, points)
    sagittal_view(right, volume, origin, spacing, points)
    caption = vtk.vtkTextActor()
    caption.SetInput(f"VertebraeLabeling on its sample CT: {points[0][0]}-{points[-1][0]} found and named "
                     "(bone surface and sagittal slice, drawn with VTK)")
    caption.GetTextProperty().SetFontSize(16)
    caption.GetTextProperty().SetColor(0.95, 0.95, 0.95)
    caption.SetPosition(12, 12)
    title.AddViewProp(caption)
    window.Render()

    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(args.png)
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    print(f"wrote {args.png} ({Path(args.png).stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
