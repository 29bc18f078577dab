// layer tests come next
